"""`spanroute demo --quick` end to end: every stage runs and summary.json has the promised shape."""

from __future__ import annotations

import json

import pytest

from tests.train_fixtures import one_thread
from train.cli import main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_thread()


def test_demo_quick_writes_the_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "trace" in printed and "grpo" in printed and "plot:" in printed
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= {"baseline", "methods", "seconds"}
    assert isinstance(s["baseline"]["accuracy"], float)
    assert set(s["methods"]) == {"grpo", "trace"}
    for m in ("grpo", "trace"):
        assert {"accuracy", "steps", "response_length", "entropy"} <= set(s["methods"][m])
        assert s["methods"][m]["steps"] == 2
        assert (out / m / "final" / "model.safetensors").exists()
        assert (out / m / "metrics.jsonl").read_text().count("\n") == 2
    assert (out / "curves.png").exists()
    # each round is a datastore version with lineage: generate, annotate, skills per arm
    from datastore import Store

    stages = [v.lineage.get("stage") for v in Store(out / "store").versions()]
    assert stages.count("generate") == 2 and stages.count("annotate") == 2
    # a rerun into the same folder refuses instead of mixing runs
    assert main(["demo", "--quick", "--out", str(out)]) == 1
