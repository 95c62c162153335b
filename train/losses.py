"""Pure loss functions for GRPO, TRACE, Skill-SD and all-token on-policy distillation.

Every function takes tensors by keyword (no config objects) and either returns a tensor or
`(loss, metrics)`, where `metrics` holds detached Python floats. Notation (DESIGN.md §7), per
sequence i and response token t:

    lp_t   student log-prob of the sampled token (nats), with gradient
    old_t  behaviour-policy log-prob of the same token (nats), no gradient
    r_t    = exp(lp_t − old_t)
    A_i    group advantage
    p_t    student distribution over the vocabulary, q_t teacher distribution (no gradient)

Shapes are in the names: B sequences, T response tokens, N selected rows (e.g. span tokens),
V vocabulary, K top-k. Log-probs and KLs are in nats. Reductions run in float32 whatever the input
dtype (bfloat16 sums over a 150k vocabulary lose too much).

Inputs: per-token tensors may hold anything in masked (padding) slots — −1e9 sentinels, ±inf,
nan: those slots are set to 0 before any arithmetic, so the loss and the (finite) gradients are
exactly those of a clean batch, and the gradient there is 0. Rewards and advantages may come in
any real dtype (bool, int, float16 … float64), as numpy arrays or lists.

Departures from the papers, stated once:
- `aggregate` counts are global: pass `num_tokens` / `num_seqs` of the whole optimizer step
  (all micro-batches, all ranks) so that summing micro-batch losses gives the full-batch loss.
- TRACE's KL term is normalised per sequence (1/|y_i|) and averaged over sequences (DESIGN §7),
  whatever the GRPO aggregation is.
- The top-k reverse KL uses the gradient-correct form Σ_{v∈K} p(v)(sg(log p(v)) − log q(v)); the
  plain truncated form Σ_{v∈K} p(v)(log p(v) − log q(v)) pushes mass out of K into the tail.

The registry `LOSSES` maps a method name to its loss function; `call_loss` calls one with the
keyword arguments it accepts out of a larger dict, so a trainer needs no if/elif over methods.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# --------------------------------------------------------------------------- advantages, GRPO


def _up(x: Tensor | Any) -> Tensor:
    """A real tensor of at least float32 (bool/int/bfloat16/float16 → float32; float64 stays).

    Accepts tensors of any real dtype, numpy arrays and Python numbers or sequences."""
    x = torch.as_tensor(x)
    if x.is_complex():
        raise TypeError(f"expected real values, got {x.dtype}")
    return x if x.dtype == torch.float64 else x.float()


def _masked(x_BT: Tensor | Any, mask_BT: Tensor) -> Tensor:
    """`x` (upcast) with masked-out slots replaced by 0 *before* any arithmetic.

    Reading a padding slot holding ``nan``/``±inf``/−1e9 through ``exp`` or a difference, and
    zeroing the result only at the end, leaves ``0 · nan`` in the backward pass; a `where` first
    gives those slots an exact zero gradient and nothing to leak."""
    x = _up(x_BT)
    return torch.where(mask_BT.to(x.device), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _row_values(x_B: Tensor | Any, mask_BT: Tensor) -> Tensor:
    """Per-sequence values (advantages) with rows that hold no response token set to 0 first."""
    x = _up(x_B)
    return torch.where(mask_BT.to(x.device).any(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _group_index(group_ids_B: Tensor | Sequence[Any], device: torch.device) -> Tensor:
    """Map arbitrary group ids (ints, strings) to dense int64 indices 0..G−1."""
    if isinstance(group_ids_B, Tensor):
        return torch.unique(group_ids_B, return_inverse=True)[1].to(device)
    index: dict[Any, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in group_ids_B], device=device)


def group_advantages(
    rewards_B: Tensor, group_ids_B: Tensor | Sequence[Any], eps: float = 1e-6, scale: bool = True
) -> Tensor:
    """Group-relative advantages: (R − group mean) / (group population std + eps).

    `rewards_B` may be a tensor of any real dtype (bool, int, float16 … float64), a numpy array or
    a list; the statistics run in float32 (float64 for float64 input), the result's dtype.
    `group_ids_B` may be a tensor or a sequence of hashables (e.g. the `group_id` strings).
    `scale=False` gives R − mean (Dr. GRPO). A group of one sample gets advantage 0.
    """
    rewards = _up(rewards_B)
    gid = _group_index(group_ids_B, rewards.device)
    if gid.shape != rewards.shape:
        raise ValueError(f"group_advantages: {rewards.shape[0]} rewards but {gid.shape[0]} group ids")
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    zeros_G = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    count_G = zeros_G.index_add(0, gid, torch.ones_like(rewards))
    mean_G = zeros_G.index_add(0, gid, rewards) / count_G
    centred = rewards - mean_G[gid]
    if scale:
        var_G = zeros_G.index_add(0, gid, centred**2) / count_G
        centred = centred / (var_G.sqrt()[gid] + eps)
    # a singleton group has nothing to be relative to
    return torch.where(count_G[gid] > 1, centred, torch.zeros_like(centred))


def grpo_token_loss(
    logprobs_BT: Tensor,
    old_logprobs_BT: Tensor,
    advantages_B: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> Tensor:
    """Clipped surrogate per token, unaggregated: −min(r·A, clip(r, 1−clip_low, 1+clip_high)·A)."""
    ratio_BT = torch.exp(_up(logprobs_BT) - _up(old_logprobs_BT))
    adv_B1 = _up(advantages_B).to(ratio_BT).unsqueeze(-1)
    unclipped = ratio_BT * adv_B1
    clipped = torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high) * adv_B1
    return -torch.minimum(unclipped, clipped)


def aggregate(
    values_BT: Tensor,
    mask_BT: Tensor,
    mode: str = "token-mean",
    num_tokens: float | int | Tensor | None = None,
    num_seqs: float | int | Tensor | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce per-token values to a scalar.

    token-mean:              Σ mask·v / num_tokens              (default num_tokens = Σ mask)
    seq-mean-token-mean:     Σ_i (Σ_t mask·v / Σ_t mask) / num_seqs   (default num_seqs = B)
    seq-mean-token-sum-norm: Σ mask·v / (num_seqs · max_len)    (default max_len = T; Dr. GRPO)

    Pass the global counts of the optimizer step (all micro-batches and ranks) as `num_tokens` /
    `num_seqs` so that the sum of micro-batch results equals the full-batch result. For
    seq-mean-token-sum-norm the micro-batches must share `max_len` (pass it if padding differs).
    Masked-out values are never read (NaN there is harmless, in the value and its gradient).
    """
    mask = mask_BT.bool()
    v = _masked(values_BT, mask)
    if mode == "token-mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        return v.sum() / torch.clamp(torch.as_tensor(denom, device=v.device, dtype=v.dtype), min=1.0)
    n_seqs = v.shape[0] if num_seqs is None else num_seqs
    n_seqs_t = torch.clamp(torch.as_tensor(n_seqs, device=v.device, dtype=v.dtype), min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq_B = v.sum(-1) / torch.clamp(mask.sum(-1), min=1)
        return per_seq_B.sum() / n_seqs_t
    if mode == "seq-mean-token-sum-norm":
        return v.sum() / (n_seqs_t * (v.shape[-1] if max_len is None else max_len))
    raise ValueError(f"aggregate: unknown mode {mode!r}; choose one of {', '.join(AGG_MODES)}")


# --------------------------------------------------------------------------- KL divergences


def _kl_terms(logp_from: Tensor, logp_to: Tensor, prob_from: Tensor) -> Tensor:
    """Per-vocabulary terms f(v)(log f(v) − log g(v)), 0 where f(v) = 0 (avoids 0·(−inf))."""
    terms = prob_from * (logp_from - logp_to)
    return torch.where(prob_from > 0, terms, 0.0)


def clip_terms(terms_NV: Tensor, term_clip: float | None) -> Tensor:
    """TRACE's pointwise clip (DESIGN §7): each vocabulary term's magnitude is capped at
    `term_clip` (value clamp(term, −c, c)), and a capped term keeps its own gradient scaled by
    c/|term| instead of losing it. A plain clamp zeroes the gradient of the large terms — the
    tokens the teacher wants much more (forward) or the student's worst tokens (reverse) — and the
    remaining terms then pull the student *away* from the teacher (q = (½, ½), p = (¼, ¾): a
    clamp at 0.1 moves p toward (0, 1)). Scaling keeps every term's direction, so the sum still
    points toward the teacher with each entry's pull bounded. Infinite terms become ±c with no
    gradient. None: no clip."""
    if term_clip is None:
        return terms_NV
    value = terms_NV.detach()
    scale = term_clip / value.abs().clamp(min=term_clip)  # 1 under the cap, c/|term| over it, 0 at ±inf
    grad_part = torch.where(torch.isfinite(value), terms_NV - value, 0.0)  # zero-valued, carries the gradient
    return torch.where(value.abs() > term_clip, torch.sign(value) * term_clip + scale * grad_part, terms_NV)


def _clip_sum(terms_NV: Tensor, term_clip: float | None) -> Tensor:
    return clip_terms(terms_NV, term_clip).sum(-1)


def forward_kl(teacher_logits_NV: Tensor, student_logits_NV: Tensor, term_clip: float | None = None) -> Tensor:
    """KL(q‖p) per row, nats: Σ_v q(v)(log q(v) − log p(v)); q = softmax(teacher), no gradient.

    `term_clip` caps each vocabulary term's magnitude before the sum, keeping its gradient's
    direction (`clip_terms`).
    """
    logq = torch.log_softmax(_up(teacher_logits_NV.detach()), dim=-1)
    logp = torch.log_softmax(_up(student_logits_NV), dim=-1)
    return _clip_sum(_kl_terms(logq, logp, logq.exp()), term_clip)


def reverse_kl(teacher_logits_NV: Tensor, student_logits_NV: Tensor, term_clip: float | None = None) -> Tensor:
    """KL(p‖q) per row, nats: Σ_v p(v)(log p(v) − log q(v)); gradient flows through p only."""
    logq = torch.log_softmax(_up(teacher_logits_NV.detach()), dim=-1)
    logp = torch.log_softmax(_up(student_logits_NV), dim=-1)
    return _clip_sum(_kl_terms(logp, logq, logp.exp()), term_clip)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, stable at both ends."""
    x = torch.clamp(x, max=-1e-12)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_forward_kl(
    teacher_topk_logprobs_NK: Tensor,
    teacher_topk_ids_NK: Tensor,
    student_logits_NV: Tensor,
    tail: bool = False,
    term_clip: float | None = None,
) -> Tensor:
    """Forward KL on the teacher's top-k support, nats per row.

    Σ_{k} q_k (log q_k − log p(id_k)) with the teacher's own (unrenormalised) log-probs q_k. With
    `tail=True` the mass outside K is one more bucket: + q_tail (log q_tail − log p_tail), where
    q_tail = 1 − Σ_k q_k and p_tail = 1 − Σ_k p(id_k); this is then the exact KL between the two
    (K+1)-bucket distributions, ≥ 0, and equals the full forward KL when K covers the vocabulary.
    """
    logq_NK = _up(teacher_topk_logprobs_NK.detach())
    logp_NV = torch.log_softmax(_up(student_logits_NV), dim=-1)
    logp_NK = logp_NV.gather(-1, teacher_topk_ids_NK.long())
    terms_NK = _kl_terms(logq_NK, logp_NK, logq_NK.exp())
    if tail:
        logq_tail = _log1mexp(torch.logsumexp(logq_NK, dim=-1, keepdim=True))
        logp_tail = _log1mexp(torch.logsumexp(logp_NK, dim=-1, keepdim=True))
        terms_NK = torch.cat([terms_NK, _kl_terms(logq_tail, logp_tail, logq_tail.exp())], dim=-1)
    return _clip_sum(terms_NK, term_clip)


def topk_reverse_kl(
    teacher_logprobs: Tensor,
    student_logits_NV: Tensor,
    k: int | None = None,
    *,
    teacher_ids_NK: Tensor | None = None,
    term_clip: float | None = None,
) -> Tensor:
    """Reverse KL on a top-k support K, gradient-correct form, nats per row.

    Value Σ_{v∈K} p(v)(log p(v) − log q(v)); the loss is Σ_{v∈K} p(v)(sg(log p(v)) − log q(v)) so
    its gradient is Σ_{v∈K} (log p(v) − log q(v)) ∇p(v) — exactly the full reverse-KL gradient
    Σ_v (log p(v) − log q(v)) ∇p(v) restricted to K. The support K is:
    - the teacher's ids when `teacher_ids_NK` is given (`teacher_logprobs` is then [N, K], e.g.
      from vLLM prompt log-probs);
    - otherwise the student's top-`k` tokens (`teacher_logprobs` is the full [N, V] teacher
      log-probs or logits, normalised here), chosen without gradient.
    """
    logp_NV = torch.log_softmax(_up(student_logits_NV), dim=-1)
    if teacher_ids_NK is not None:
        ids_NK = teacher_ids_NK.long()
        logq_NK = _up(teacher_logprobs.detach())
    else:
        if k is None:
            raise ValueError("topk_reverse_kl: pass k (student top-k support) or teacher_ids_NK")
        ids_NK = torch.topk(logp_NV.detach(), k, dim=-1).indices
        logq_NK = torch.log_softmax(_up(teacher_logprobs.detach()), dim=-1).gather(-1, ids_NK)
    logp_NK = logp_NV.gather(-1, ids_NK)
    p_NK = logp_NK.exp()
    terms_NK = p_NK * (logp_NK.detach() - logq_NK)
    return _clip_sum(terms_NK, term_clip)


def token_entropy(logits_NV: Tensor) -> Tensor:
    """Entropy of softmax(logits) per row, nats, detached."""
    logp = torch.log_softmax(_up(logits_NV.detach()), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --------------------------------------------------------------------------- schedules, masks


def kl_schedule(step: int, w0: float = 0.5, hold: int = 10, end: int = 40) -> float:
    """TRACE's λ_s: w0 for step < hold, linear to 0 at step == end, 0 after."""
    if step < hold:
        return float(w0)
    if step >= end:
        return 0.0
    return float(w0) * (end - step) / (end - hold)


def active_span_mask(route_BT: Tensor, correct_B: Tensor, key: bool = True, error: bool = False) -> Tensor:
    """Tokens whose KL channel is on: (route == 1 & correct) if key, | (route == 2 & ~correct) if error.

    Routes: 0 none, 1 key span, 2 error span (spans.token_routes).
    """
    correct_B1 = correct_B.bool().unsqueeze(-1)
    out = torch.zeros(route_BT.shape, dtype=torch.bool, device=route_BT.device)
    if key:
        out = out | ((route_BT == 1) & correct_B1)
    if error:
        out = out | ((route_BT == 2) & ~correct_B1)
    return out


# --------------------------------------------------------------------------- method losses


def _f(x: Tensor) -> float:
    return float(_up(x.detach()))


def _grpo_metrics(logprobs_BT: Tensor, old_logprobs_BT: Tensor, mask: Tensor, clip_low: float, clip_high: float) -> dict[str, float]:
    with torch.no_grad():
        n = torch.clamp(mask.sum(), min=1)
        ratio = torch.exp(_up(logprobs_BT) - _up(old_logprobs_BT))
        clipped = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)) & mask
        r = torch.where(mask, ratio, 0.0)
        return {"clip_frac": _f(clipped.sum() / n), "ratio_mean": _f(r.sum() / n)}


def grpo_loss(
    *,
    logprobs_BT: Tensor,
    old_logprobs_BT: Tensor,
    advantages_B: Tensor,
    response_mask_BT: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    agg: str = "token-mean",
    num_tokens: float | int | Tensor | None = None,
    num_seqs: float | int | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Plain GRPO: aggregate(grpo_token_loss)."""
    mask = response_mask_BT.bool()
    lp, old = _masked(logprobs_BT, mask), _masked(old_logprobs_BT, mask)
    g_BT = grpo_token_loss(lp, old, _row_values(advantages_B, mask), clip_low, clip_high)
    loss = aggregate(g_BT, mask, agg, num_tokens, num_seqs)
    metrics = {"loss": _f(loss), "grpo_loss": _f(loss), **_grpo_metrics(lp, old, mask, clip_low, clip_high)}
    return loss, metrics


def trace_loss(
    *,
    logprobs_BT: Tensor,
    old_logprobs_BT: Tensor,
    advantages_B: Tensor,
    response_mask_BT: Tensor,
    span_mask_BT: Tensor,
    span_kl_BT: Tensor,
    kl_coef: float,
    kl_coef_max: float = 0.5,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    agg: str = "token-mean",
    num_tokens: float | int | Tensor | None = None,
    num_seqs: float | int | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """TRACE: aggregate(w·g) + kl_coef · (1/num_seqs) Σ_i Σ_t span_mask·span_kl / |y_i|.

    g = grpo_token_loss; w = 1 − kl_coef/kl_coef_max on span tokens and 1 elsewhere (the span
    tokens hand their policy-gradient weight over to the KL channel as λ grows); |y_i| = Σ_t
    response_mask[i]. `span_kl_BT` holds KL_t (nats) at span positions; other entries are ignored
    (even NaN). With kl_coef = 0 the result is exactly GRPO (the KL term is not even added).

    Keyword-only inputs, one per symbol of the formula (tensors, counts, coefficients), so a call
    reads like the formula; hence more than ten.
    """
    mask = response_mask_BT.bool()
    span = span_mask_BT.bool() & mask
    lp, old = _masked(logprobs_BT, mask), _masked(old_logprobs_BT, mask)
    g_BT = grpo_token_loss(lp, old, _row_values(advantages_B, mask), clip_low, clip_high)
    metrics = _grpo_metrics(lp, old, mask, clip_low, clip_high)
    if kl_coef == 0:
        pg = aggregate(g_BT, mask, agg, num_tokens, num_seqs)
        loss = pg
        kl_term = torch.zeros(())
    else:
        w_BT = torch.where(span, 1.0 - kl_coef / kl_coef_max, 1.0)
        pg = aggregate(w_BT * g_BT, mask, agg, num_tokens, num_seqs)
        kl_BT = _masked(span_kl_BT, span)
        per_seq_B = kl_BT.sum(-1) / torch.clamp(mask.sum(-1), min=1)
        n_seqs = per_seq_B.shape[0] if num_seqs is None else num_seqs
        kl_term = per_seq_B.sum() / torch.as_tensor(n_seqs, dtype=per_seq_B.dtype, device=per_seq_B.device)
        loss = pg + kl_coef * kl_term
    with torch.no_grad():
        n_span = span.sum()
        span_kl_mean = _masked(span_kl_BT, span).sum() / torch.clamp(n_span, min=1)
        metrics.update(
            loss=_f(loss),
            pg_loss=_f(pg),
            kl_term=_f(kl_term),
            kl_span_mean=_f(span_kl_mean),
            span_frac=_f(n_span / torch.clamp(mask.sum(), min=1)),
            kl_coef=float(kl_coef),
        )
    return loss, metrics


def k3(u: Tensor) -> Tensor:
    """Schulman's k3 estimator term: exp(−u) − 1 + u ≥ 0, with u = log p − log q of a sample."""
    return torch.exp(-u) - 1.0 + u


def skill_sd_loss(
    *,
    logprobs_BT: Tensor,
    old_logprobs_BT: Tensor,
    teacher_logprobs_BT: Tensor,
    advantages_B: Tensor,
    response_mask_BT: Tensor,
    coef: float = 0.001,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    agg: str = "token-mean",
    num_tokens: float | int | Tensor | None = None,
    num_seqs: float | int | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Skill-SD: aggregate(g) + coef · aggregate(ρ · k3(lp − lq)), same aggregation for both.

    ρ = exp(lp − sg(old)) (gradient through the numerator, an importance weight for the
    off-policy micro-steps); lq = teacher log-prob of the sampled token under the
    skill-conditioned prompt, no gradient. At θ = θ_old the KL part's gradient per token is
    (lp − lq)·∇lp, the on-policy reverse-KL gradient.

    Keyword-only inputs, one per symbol of the formula (tensors, counts, coefficients), so a call
    reads like the formula; hence more than ten.
    """
    mask = response_mask_BT.bool()
    lp, old = _masked(logprobs_BT, mask), _masked(old_logprobs_BT, mask)
    u_BT = lp - _masked(torch.as_tensor(teacher_logprobs_BT).detach(), mask)
    rho_BT = torch.exp(lp - old.detach())
    g_BT = grpo_token_loss(lp, old, _row_values(advantages_B, mask), clip_low, clip_high)
    pg = aggregate(g_BT, mask, agg, num_tokens, num_seqs)
    kl = aggregate(rho_BT * k3(u_BT), mask, agg, num_tokens, num_seqs)
    loss = pg + coef * kl
    metrics = _grpo_metrics(lp, old, mask, clip_low, clip_high)
    metrics.update(loss=_f(loss), pg_loss=_f(pg), kl_sampled_k3=_f(kl), coef=float(coef))
    return loss, metrics


def all_token_opd_loss(
    *,
    logprobs_BT: Tensor,
    old_logprobs_BT: Tensor,
    advantages_B: Tensor,
    response_mask_BT: Tensor,
    token_kl_BT: Tensor,
    kl_coef: float,
    kl_coef_max: float = 0.5,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    agg: str = "token-mean",
    num_tokens: float | int | Tensor | None = None,
    num_seqs: float | int | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """All-token on-policy self-distillation baseline: TRACE with every response token a span.

    `token_kl_BT` holds KL_t (nats) at every response position; the aggregation, weights and
    schedule are TRACE's, so the two differ only in where the KL channel is on.

    Keyword-only inputs, one per symbol of the formula (tensors, counts, coefficients), so a call
    reads like the formula; hence more than ten.
    """
    return trace_loss(
        logprobs_BT=logprobs_BT,
        old_logprobs_BT=old_logprobs_BT,
        advantages_B=advantages_B,
        response_mask_BT=response_mask_BT,
        span_mask_BT=response_mask_BT,
        span_kl_BT=token_kl_BT,
        kl_coef=kl_coef,
        kl_coef_max=kl_coef_max,
        clip_low=clip_low,
        clip_high=clip_high,
        agg=agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
    )


LossFn = Callable[..., tuple[Tensor, dict[str, float]]]

LOSSES: dict[str, LossFn] = {
    "grpo": grpo_loss,
    "trace": trace_loss,
    "skill_sd": skill_sd_loss,
    "opd": all_token_opd_loss,
}


def call_loss(method: str, **inputs: Any) -> tuple[Tensor, dict[str, float]]:
    """Call `LOSSES[method]` with the keyword arguments it accepts out of `inputs`.

    A trainer can pass one dict holding everything it has (logprobs, spans, teacher outputs…);
    a required argument that is missing raises a clear error instead of being silently defaulted.
    """
    if method not in LOSSES:
        raise ValueError(f"unknown loss method {method!r}; choose one of {', '.join(LOSSES)}")
    fn = LOSSES[method]
    params = inspect.signature(fn).parameters
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in inputs]
    if missing:
        raise ValueError(f"loss {method!r} needs {', '.join(missing)}")
    return fn(**{k: v for k, v in inputs.items() if k in params})
