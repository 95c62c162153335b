"""The vLLM scorer: prompt-log-prob conversion (CPU, always) and agreement with the transformers
scorer on the same weights (marked `vllm`: CI runs it in .venv-vllm through .ci/vllm-cpu)."""

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


def _batch(vocab: int = V):
    g = torch.Generator().manual_seed(0)
    resp = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (6, 4)]
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 9)]
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
def test_vllm_scorer_topk_prompt_logprobs_agree_with_transformers(tmp_path):
    """Real vLLM prompt log-probs (top-5 at selected positions) vs a transformers forward, on a model
    whose head size vLLM's CPU attention takes (>= 32); KV cache by bytes (tests/vllm_fixtures)."""
    from transformers import AutoModelForCausalLM
    from vllm_fixtures import KV_BYTES, vllm_tiny_dir

    from train.vllm_scorer import VLLMScorer

    vllm_tiny_dir(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    batch, select = _batch(vocab=model.config.vocab_size)
    scorer = VLLMScorer(tmp_path / "m", topk=5, kv_cache_memory_bytes=KV_BYTES, max_model_len=64)
    got = scorer.score(batch, select_BT=select)
    with torch.no_grad():
        ref = score(model, batch, select_BT=select, topk=5)
    diff = (got.logprobs_BT - ref.logprobs_BT).abs().max().item()
    print(f"vLLM vs transformers prompt log-probs: max abs diff {diff:.2e}")
    torch.testing.assert_close(got.logprobs_BT, ref.logprobs_BT, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.topk_logprobs_NK, ref.topk_logprobs_NK, atol=1e-4, rtol=1e-4)
    assert got.topk_ids_NK.shape == (int(select.sum()), 5)
    assert (got.topk_ids_NK == ref.topk_ids_NK).float().mean() > 0.95  # near-ties may swap order
