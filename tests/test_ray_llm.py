"""The GPU path of rollout generation on Ray (`ray.data.llm` + vLLM): the output-row conversion runs
everywhere; the end-to-end run needs vLLM (marker `vllm`: CI runs it on CPU in .venv-vllm through .ci/vllm-cpu)."""

from __future__ import annotations

import pytest

from train.rollouts.ray_generate import sample_from_llm_row


def test_llm_row_to_sample_takes_the_sampled_ids_logprob_whatever_the_key_type():
    row = {"prompt_id": "p1", "generated_text": "12", "generated_tokens": [5, 7],
           "logprobs": [{5: {"logprob": -0.25, "rank": 1}}, {"7": {"logprob": -1.5, "rank": 2}, "9": None}]}
    s = sample_from_llm_row(row, max_new_tokens=8)
    assert (s.text, s.token_ids, s.logprobs, s.finish_reason) == ("12", [5, 7], [-0.25, -1.5], "stop")
    assert sample_from_llm_row(row, max_new_tokens=2).finish_reason == "length"
    with pytest.raises(ValueError, match="prompt p1: no log-prob for sampled id 7"):
        sample_from_llm_row(dict(row, logprobs=[row["logprobs"][0], {"9": {"logprob": -2.0}}]), 8)


@pytest.mark.vllm
def test_rollouts_on_ray_vllm_backend_writes_schema_rows(tmp_path):
    """`ray.data.llm` + vLLM on whatever the machine has (CPU here): engine kwargs pass through,
    engine metrics stay off (on, they import Ray Serve), rows match the local schema."""
    import ray
    from transformers import AutoTokenizer
    from vllm_fixtures import KV_BYTES, vllm_tiny_dir

    from datastore.schema import ROLLOUT_SCHEMA
    from train.rollouts.generate import Sampling
    from train.rollouts.ray_generate import rollouts_on_ray
    from train.toy import make_problems, toy_prompt_records

    ckpt = str(vllm_tiny_dir(tmp_path / "m"))
    prompts = toy_prompt_records(make_problems(3, seed=0), AutoTokenizer.from_pretrained(ckpt))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        table = rollouts_on_ray(prompts, checkpoint=ckpt, n=2, sampling=Sampling(max_new_tokens=8), seed=0,
                                backend="vllm", batch_size=8,
                                engine_kwargs={"kv_cache_memory_bytes": KV_BYTES, "max_model_len": 128})
    finally:
        ray.shutdown()
    assert table.schema.equals(ROLLOUT_SCHEMA, check_metadata=False) and table.num_rows == 6
    assert table["prompt_id"].to_pylist() == [p.prompt_id for p in prompts for _ in range(2)]
    for r in table.to_pylist():
        assert len(r["response_token_ids"]) == len(r["response_logprobs"]) > 0
