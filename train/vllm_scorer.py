"""Teacher scoring with vLLM prompt log-probs (GPU extra; vLLM is imported lazily).

The teacher sequence (privileged prompt + the student's response ids) is sent as a token-id
prompt with `max_tokens=1` and `prompt_logprobs=k`; vLLM then returns, for every prompt position
j, the log-probs (nats, normalised over the full vocabulary, before any sampling processors:
`logprobs_mode="raw_logprobs"`) of the top-k tokens plus the actual token j. We read the
response positions out of that into the same `Scored` structure as `train.scoring.score`, with
top-k only (no hidden states): `train.scoring.span_kl` then uses the top-k estimators.

Weights: pass a model directory (e.g. the teacher copy saved with `save_pretrained`) or an
existing `vllm.LLM`; keeping vLLM's weights in sync with a changing teacher is the trainer's job
(reload every refresh).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from train.scoring import Scored, ScoringBatch


class VLLMScorer:
    """Scores `ScoringBatch`es with vLLM; same output structure as the transformers scorer."""

    def __init__(self, model: Any, topk: int = 20, **llm_kwargs: Any) -> None:
        try:
            import vllm  # noqa: F401  (GPU extra: pip install 'spanroute[gpu]')
        except ImportError as exc:
            raise ImportError("VLLMScorer needs vLLM: pip install 'spanroute[gpu]' (CUDA) or use the transformers Teacher") from exc
        from vllm import LLM

        self.topk = topk
        if isinstance(model, LLM):
            self.llm = model
        else:
            llm_kwargs.setdefault("skip_tokenizer_init", True)
            llm_kwargs.setdefault("enable_prefix_caching", False)  # prompt log-probs of cached prefixes are not recomputed
            from train.rollouts.vllm_generator import engine_settings

            self.llm = LLM(model=str(model), **engine_settings(llm_kwargs))

    def score(self, batch: ScoringBatch, select_BT: Tensor | None = None, topk: int | None = None,
              token_logprobs: bool = True) -> Scored:
        """Sampled-token log-probs at every response position; top-k at `select_BT` positions.
        (`token_logprobs` is accepted for the `Scorer` protocol; vLLM returns them anyway.)"""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        k = topk or self.topk
        lengths = batch.attention_mask_BL.sum(-1).tolist()
        prompts = [TokensPrompt(prompt_token_ids=batch.input_ids_BL[i, :n].tolist()) for i, n in enumerate(lengths)]
        params = SamplingParams(max_tokens=1, prompt_logprobs=k, temperature=0.0, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return scored_from_prompt_logprobs([o.prompt_logprobs for o in outputs], batch, select_BT, k)


def scored_from_prompt_logprobs(
    prompt_logprobs: list[Any], batch: ScoringBatch, select_BT: Tensor | None, k: int
) -> Scored:
    """Convert vLLM `prompt_logprobs` (per sequence: a list over positions of {token_id: Logprob})
    into `Scored`. Response token t of row i is prompt position pred_pos + 1."""
    rmask = batch.response_mask_BT.bool()
    sel = torch.zeros_like(rmask) if select_BT is None else (select_BT.bool() & rmask)
    B, T = rmask.shape
    lp_BT = torch.zeros(B, T)
    top_lp, top_ids = [], []
    for i in range(B):
        for t in range(T):
            if not rmask[i, t]:
                continue
            pos = int(batch.pred_pos_BT[i, t]) + 1
            entry = prompt_logprobs[i][pos]
            tok = int(batch.response_ids_BT[i, t])
            lp_BT[i, t] = entry[tok].logprob
            if sel[i, t]:
                # entries are the top-k by rank plus the actual token (which may rank lower)
                ranked = sorted(((v.rank, tid, v.logprob) for tid, v in entry.items() if v.rank is not None and v.rank <= k))
                top_ids.append([tid for _, tid, _ in ranked[:k]])
                top_lp.append([lp for _, _, lp in ranked[:k]])
    return Scored(
        logprobs_BT=lp_BT,
        response_mask_BT=rmask,
        select_BT=sel,
        topk_logprobs_NK=torch.tensor(top_lp, dtype=torch.float32).reshape(-1, k),
        topk_ids_NK=torch.tensor(top_ids, dtype=torch.long).reshape(-1, k),
    )
