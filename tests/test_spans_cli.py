"""`spanroute spans show` against a real on-disk store (skipped until the datastore is built)."""

from __future__ import annotations

import pyarrow as pa
import pytest

import datastore
from spans import Span, spans_to_arrow
from train.cli import main

RESPONSES = ["Step 1: 𝑥 = 17 + 25 = 42\r\nAnswer: 42", "Step 1: 3 * 4 = 13 <oops>\nAnswer: 13", "Answer: 7"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three rollouts; spans by two annotators on the first, one on the second, none on the third."""
    where = tmp_path_factory.mktemp("store") / "store"
    s = datastore.Store(where)
    r0, r1 = RESPONSES[0], RESPONSES[1]
    key = Span(r0.index("17"), r0.index("\r"), "key", "rule", "toy", r0[r0.index("17"):r0.index("\r")])
    human = Span(0, 6, "key", "human", "ann-1", "Step 1")
    err = Span(r1.index("13"), r1.index("13") + 2, "error", "rule", "toy", "13")
    n = len(RESPONSES)
    table = pa.table({
        "rollout_id": ["abc111", "abc222", "def333"],
        "prompt_id": ["p0", "p1", "p2"],
        "group_id": ["g0", "g1", "g2"],
        "prompt": ["q"] * n,
        "response": RESPONSES,
        "correct": [True, False, True],
        "reward": pa.array([1.0, 0.0, 1.0], pa.float32()),
    })
    s.write(table, message="gen", lineage=datastore.Lineage(stage="generate"))
    spans = pa.table({"rollout_id": ["abc111", "abc222"], "spans": spans_to_arrow([[key, human], [err]])})
    s.update(spans, message="annotate", lineage=datastore.Lineage(stage="annotate", annotator="rule"))
    s.tag("ann-rule-0001")
    return str(where)


def test_show_prints_spans_per_annotator(store, capsys):
    assert main(["spans", "show", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "rollout abc111" in out and "rollout abc222" in out and "def333" not in out
    assert "rule/toy: 1 key, 0 error" in out and "human/ann-1: 1 key, 0 error" in out
    assert "[[key: 17 + 25 = 42]]" in out  # captured output has no colour: spans are bracketed
    assert "key   [12:24) '17 + 25 = 42'" in out


def test_show_one_rollout_by_prefix_source_and_tag(store, capsys):
    assert main(["spans", "show", "--store", store, "--rollout", "abc1", "--source", "human",
                 "--version", "ann-rule-0001"]) == 0
    out = capsys.readouterr().out
    assert "rollout abc111" in out and "human/ann-1" in out and "rule/toy" not in out
    assert main(["spans", "show", "--store", store, "--rollout", "abc"]) == 1
    assert "matches 2 rollouts" in capsys.readouterr().err
    assert main(["spans", "show", "--store", store, "--version", "1"]) == 1  # before spans
    assert "add --all" in capsys.readouterr().err
    assert main(["spans", "show", "--store", store, "--version", "1", "--all"]) == 0


def test_show_html_writes_a_self_contained_page(store, tmp_path, capsys):
    out = tmp_path / "spans.html"
    assert main(["spans", "show", "--store", store, "--out", str(out), "--all", "--limit", "10"]) == 0
    assert "3 rollout(s)" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert "&lt;oops&gt;" in page and page.count("<section>") == 3 and "<script" not in page
