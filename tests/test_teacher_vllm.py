"""The vLLM scorer: prompt-log-prob conversion (CPU, always) and agreement with the transformers
scorer on the same weights (marked `vllm`: needs vLLM, not in CI)."""

from typing import NamedTuple

import pytest
import torch
from tests.losses_fixtures import tiny_qwen2

from train.scoring import pack_batch, score
from train.vllm_scorer import scored_from_prompt_logprobs

V = 512


class _Logprob(NamedTuple):  # the fields of vllm.logprobs.Logprob that the scorer reads
    logprob: float
    rank: int


def _batch():
    g = torch.Generator().manual_seed(0)
    resp = [torch.randint(3, V, (n,), generator=g).tolist() for n in (6, 4)]
    prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (5, 9)]
    batch = pack_batch(prompts, resp)
    select = torch.rand(batch.response_mask_BT.shape, generator=g) > 0.4
    return batch, select


def _vllm_style(model, batch, k):
    """vLLM's prompt_logprobs layout built from a full forward: position j holds the top-k of the
    distribution predicting token j, plus token j itself; position 0 is None."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL).logits
    logp = torch.log_softmax(logits.float(), -1)
    out = []
    for i, n in enumerate(batch.attention_mask_BL.sum(-1).tolist()):
        seq = [None]
        for j in range(1, n):
            dist = logp[i, j - 1]
            ranks = torch.argsort(torch.argsort(dist, descending=True)) + 1
            ids = set(torch.topk(dist, k).indices.tolist()) | {int(batch.input_ids_BL[i, j])}
            seq.append({tid: _Logprob(float(dist[tid]), int(ranks[tid])) for tid in ids})
        out.append(seq)
    return out


def test_prompt_logprobs_conversion_matches_transformers_scorer():
    model = tiny_qwen2(V)
    batch, select = _batch()
    got = scored_from_prompt_logprobs(_vllm_style(model, batch, 4), batch, select, 4)
    with torch.no_grad():
        ref = score(model, batch, select_BT=select, topk=4)
    torch.testing.assert_close(got.logprobs_BT, ref.logprobs_BT, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.topk_logprobs_NK, ref.topk_logprobs_NK, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.topk_ids_NK, ref.topk_ids_NK) and torch.equal(got.select_BT, ref.select_BT)


@pytest.mark.vllm
def test_vllm_scorer_agrees_with_transformers(tmp_path):
    pytest.importorskip("vllm")
    from train.vllm_scorer import VLLMScorer

    model = tiny_qwen2(V)
    model.save_pretrained(tmp_path / "m")
    batch, select = _batch()
    scorer = VLLMScorer(tmp_path / "m", topk=5, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.1,
                        max_model_len=64)
    got = scorer.score(batch, select_BT=select)
    with torch.no_grad():
        ref = score(model, batch, select_BT=select, topk=5)
    torch.testing.assert_close(got.logprobs_BT, ref.logprobs_BT, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.topk_logprobs_NK, ref.topk_logprobs_NK, atol=1e-4, rtol=1e-4)
    assert (got.topk_ids_NK == ref.topk_ids_NK).float().mean() > 0.95  # near-ties may swap order
