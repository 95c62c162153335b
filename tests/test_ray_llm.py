"""The GPU path of rollout generation on Ray (`ray.data.llm` + vLLM): the output-row conversion runs
everywhere; the end-to-end run needs vLLM and a GPU (markers `vllm`, `gpu`: not in CI)."""

from __future__ import annotations

import pytest

from train.ray_generate import sample_from_llm_row


def test_llm_row_to_sample_takes_the_sampled_ids_logprob_whatever_the_key_type():
    row = {"prompt_id": "p1", "generated_text": "12", "generated_tokens": [5, 7],
           "logprobs": [{5: {"logprob": -0.25, "rank": 1}}, {"7": {"logprob": -1.5, "rank": 2}, "9": None}]}
    s = sample_from_llm_row(row, max_new_tokens=8)
    assert (s.text, s.token_ids, s.logprobs, s.finish_reason) == ("12", [5, 7], [-0.25, -1.5], "stop")
    assert sample_from_llm_row(row, max_new_tokens=2).finish_reason == "length"
    with pytest.raises(ValueError, match="prompt p1: no log-prob for sampled id 7"):
        sample_from_llm_row(dict(row, logprobs=[row["logprobs"][0], {"9": {"logprob": -2.0}}]), 8)


@pytest.mark.vllm
@pytest.mark.gpu
def test_rollouts_on_ray_vllm_backend_writes_schema_rows(tmp_path):
    pytest.importorskip("vllm")
    ray = pytest.importorskip("ray")
    from datastore.schema import ROLLOUT_SCHEMA
    from train.ray_generate import rollouts_on_ray
    from train.rollout import Sampling
    from train.toy import make_problems, toy_policy, toy_prompt_records

    ckpt = str(toy_policy())
    from transformers import AutoTokenizer

    prompts = toy_prompt_records(make_problems(8, seed=0), AutoTokenizer.from_pretrained(ckpt))
    ray.init(num_gpus=1, include_dashboard=False)
    try:
        table = rollouts_on_ray(prompts, checkpoint=ckpt, n=4, sampling=Sampling(max_new_tokens=64), seed=0,
                                backend="vllm", batch_size=16)
    finally:
        ray.shutdown()
    assert table.schema == ROLLOUT_SCHEMA and table.num_rows == 32
    for r in table.to_pylist():
        assert len(r["response_token_ids"]) == len(r["response_logprobs"]) > 0
