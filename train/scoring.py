"""Scoring response tokens with a causal LM without ever building [B, T, V] logits.

A scoring batch is prompt ids + the student's response ids, right-padded. For each response token
we take the final hidden state that predicts it (position `prompt_len − 1 + t`) and apply the LM
head only where needed:

- sampled-token log-probs for every response position, in row chunks of `chunk_rows` (default: 2**25 logits per chunk);
- full distributions only at requested positions (e.g. span tokens): the hidden states there are
  gathered *before* the LM head, and KLs against a teacher are computed chunk by chunk
  (`span_kl`).

With gradient on, every chunk runs under activation checkpointing, so its [chunk, V] logits are
freed after the forward and recomputed in the backward: peak memory is O(chunk_rows · V), not
O(B · T · V). Works for any transformers causal LM whose logits are `lm_head(model.model(...))`
(Qwen2/Llama/Mistral style; no final logit soft-capping).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from train.losses import forward_kl, reverse_kl, topk_forward_kl, topk_reverse_kl

# Row chunks are sized by elements so memory does not depend on the vocabulary: 2**25 float32
# logits = 128 MiB per [chunk, V] temporary (≈ 220 rows at V = 152k, 4096 rows at V = 8k).
CHUNK_ELEMENTS = 2**25
DEFAULT_CHUNK_ROWS: int | None = None  # None: CHUNK_ELEMENTS // V rows


def resolve_chunk_rows(chunk_rows: int | None, head: object) -> int:
    """`chunk_rows` if given, else CHUNK_ELEMENTS // V (V read off the LM head), at least 1."""
    if chunk_rows is not None:
        return max(1, int(chunk_rows))
    weight = getattr(head, "weight", None)
    vocab = int(weight.shape[0]) if isinstance(weight, Tensor) else int(getattr(head, "out_features", 1) or 1)
    return max(1, CHUNK_ELEMENTS // vocab)


@dataclass(frozen=True)
class ScoringBatch:
    """Prompt + response token ids, right-padded, with the response positions located.

    input_ids_BL, attention_mask_BL: the full sequences (L = longest prompt + response).
    response_ids_BT, response_mask_BT: the response tokens (T = longest response), padded with 0.
    pred_pos_BT: index into L of the hidden state that predicts response token t, i.e.
        prompt_len − 1 + t (0 at padding). Student and teacher batches built from the same
        responses share response_ids_BT / response_mask_BT, so their rows align token for token.
    """

    input_ids_BL: Tensor
    attention_mask_BL: Tensor
    response_ids_BT: Tensor
    response_mask_BT: Tensor
    pred_pos_BT: Tensor


def pack_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int = 0) -> ScoringBatch:
    """Concatenate each prompt with its response, right-pad, and record response positions.

    Right padding keeps every real token at its natural position id (0..len−1) without passing
    position ids. Every prompt needs at least one token (something must predict token 0).
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"pack_batch: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    return pack_flat(*_flat(prompt_ids), *_flat(response_ids), pad_id=pad_id)


def _flat(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    splits = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=splits[1:])
    return np.fromiter((int(x) for r in rows for x in r), dtype=np.int64, count=int(splits[-1])), splits


def pad_rows(values_N: np.ndarray, splits: np.ndarray, width: int, dtype: torch.dtype,
             at_B: np.ndarray | None = None, out_BW: Tensor | None = None) -> Tensor:
    """Rows of flat values (row b: ``values_N[splits[b]:splits[b+1]]``, Arrow list layout) written
    into a right-padded ``[B, width]`` tensor at columns ``at_B[b]`` onwards (default 0), one
    scatter for the whole batch. Writes into `out_BW` when given (zeros otherwise)."""
    n_B = np.diff(splits)
    B = len(n_B)
    out = torch.zeros((B, width), dtype=dtype) if out_BW is None else out_BW
    row_N = np.repeat(np.arange(B), n_B)
    col_N = np.arange(len(values_N)) - np.repeat(splits[:-1], n_B)
    if at_B is not None:
        col_N = col_N + np.repeat(at_B, n_B)
    out[torch.from_numpy(row_N), torch.from_numpy(col_N)] = torch.tensor(np.asarray(values_N)).to(dtype)  # a copy: Arrow buffers are read-only
    return out


def pack_flat(prompt_N: np.ndarray, prompt_splits: np.ndarray, response_N: np.ndarray, response_splits: np.ndarray,
              pad_id: int = 0) -> ScoringBatch:
    """`pack_batch` from flat token ids and row splits (Arrow list layout): one tensor per field,
    filled by whole-batch scatters."""
    n_p, n_r = np.diff(prompt_splits), np.diff(response_splits)
    if len(n_p) != len(n_r):
        raise ValueError(f"pack_batch: {len(n_p)} prompts but {len(n_r)} responses")
    if (n_p == 0).any():
        raise ValueError(f"pack_batch: prompt of row {int(np.argmax(n_p == 0))} is empty; a response token needs a "
                         "predecessor")
    B = len(n_p)
    L = int((n_p + n_r).max()) if B else 1
    T = int(n_r.max()) if B else 0
    input_ids = pad_rows(prompt_N, prompt_splits, L, torch.long, out_BW=torch.full((B, L), pad_id, dtype=torch.long))
    pad_rows(response_N, response_splits, L, torch.long, at_B=n_p, out_BW=input_ids)
    attn = (torch.arange(L)[None, :] < torch.from_numpy(n_p + n_r)[:, None]).long()
    resp = pad_rows(response_N, response_splits, T, torch.long)
    rmask = torch.arange(T)[None, :] < torch.from_numpy(n_r)[:, None]
    pred = torch.where(rmask, torch.from_numpy(n_p - 1)[:, None] + torch.arange(T)[None, :], 0)
    return ScoringBatch(input_ids, attn, resp, rmask, pred)


@dataclass(frozen=True)
class Scored:
    """What a scorer returns for one batch.

    logprobs_BT: log-prob (nats) of each sampled response token; 0 at padding. Carries gradient
        when scored with gradient on (student side). None when not asked for.
    response_mask_BT: real response tokens.
    select_BT: positions whose distribution was requested; rows N of the *_N* fields are these
        positions in row-major order (select_BT & response_mask_BT).
    entropy_BT: entropy (nats) of the distribution at each response position, detached; None if
        not asked for.
    hidden_NH, head: final hidden states at the selected positions and the LM head
        (hidden → logits); distributions are computed from them chunk by chunk. None for scorers
        that only return top-k (vLLM).
    topk_logprobs_NK, topk_ids_NK: the top-k log-probs (nats, normalised over the full
        vocabulary) and their token ids at the selected positions, when asked for.
    """

    logprobs_BT: Tensor | None
    response_mask_BT: Tensor
    select_BT: Tensor
    entropy_BT: Tensor | None = None
    hidden_NH: Tensor | None = None
    head: Callable[[Tensor], Tensor] | None = None
    topk_logprobs_NK: Tensor | None = None
    topk_ids_NK: Tensor | None = None

    def full_logprobs_NV(self, chunk_rows: int | None = DEFAULT_CHUNK_ROWS) -> Tensor:
        """Materialise the [N, V] log-probs at the selected rows (small N only: tests, debugging)."""
        if self.hidden_NH is None or self.head is None:
            raise ValueError("Scored.full_logprobs_NV: this scorer returned top-k only")
        chunk_rows = resolve_chunk_rows(chunk_rows, self.head)
        parts = [torch.log_softmax(self.head(h).float(), dim=-1) for h in self.hidden_NH.split(chunk_rows)]
        return torch.cat(parts) if parts else self.hidden_NH.new_zeros((0, 0))


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (hidden states, final norm included) and the LM head of a causal LM."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return body, model.get_output_embeddings()


def response_hidden(model: nn.Module, batch: ScoringBatch) -> Tensor:
    """Final hidden state predicting each response token: [B, T, H] (rows at padding are junk)."""
    body, _ = decoder_and_head(model)
    device = next(model.parameters()).device
    out = body(input_ids=batch.input_ids_BL.to(device), attention_mask=batch.attention_mask_BL.to(device), use_cache=False)
    hidden_BLH = out.last_hidden_state
    idx_BTH = batch.pred_pos_BT.to(device).unsqueeze(-1).expand(-1, -1, hidden_BLH.shape[-1])
    return hidden_BLH.gather(1, idx_BTH)


def _maybe_checkpoint(fn: Callable[..., object], *args: Tensor) -> object:
    """Run `fn` under activation checkpointing when it will be differentiated, else plainly."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args if isinstance(a, Tensor)):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def chunked_token_logprobs(
    hidden_MH: Tensor,
    ids_M: Tensor,
    head: Callable[[Tensor], Tensor],
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """log p(ids) (nats) per row, and optionally the detached entropy, one row chunk at a time."""

    def one(h: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        logits = head(h).float()  # [C, V]
        lse = torch.logsumexp(logits, dim=-1)
        lp = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - lse
        if not entropy:
            return lp, lp.new_zeros(())
        with torch.no_grad():
            logp = logits - lse.unsqueeze(-1)
            ent = -(logp.exp() * logp).sum(-1)
        return lp, ent

    chunk_rows = resolve_chunk_rows(chunk_rows, head)
    lps, ents = [], []
    for h, ids in zip(hidden_MH.split(chunk_rows), ids_M.split(chunk_rows)):
        lp, ent = _maybe_checkpoint(one, h, ids)  # type: ignore[misc]
        lps.append(lp)
        ents.append(ent)
    if not lps:
        return hidden_MH.new_zeros((0,)), (hidden_MH.new_zeros((0,)) if entropy else None)
    return torch.cat(lps), (torch.cat(ents) if entropy else None)


@torch.no_grad()
def chunked_topk(hidden_NH: Tensor, head: Callable[[Tensor], Tensor], k: int, chunk_rows: int | None = DEFAULT_CHUNK_ROWS) -> tuple[Tensor, Tensor]:
    """Top-k log-probs (nats, normalised over the full vocabulary) and ids per row: [N, K] each."""
    chunk_rows = resolve_chunk_rows(chunk_rows, head)
    vals, ids = [], []
    for h in hidden_NH.split(chunk_rows):
        logp = torch.log_softmax(head(h).float(), dim=-1)
        top = torch.topk(logp, k, dim=-1)
        vals.append(top.values)
        ids.append(top.indices)
    if not vals:
        return hidden_NH.new_zeros((0, k)).float(), torch.zeros((0, k), dtype=torch.long, device=hidden_NH.device)
    return torch.cat(vals), torch.cat(ids)


def rows_to_BT(values_N: Tensor, select_BT: Tensor, fill: float = 0.0) -> Tensor:
    """Scatter per-row values back to [B, T] at the selected positions (row-major); keeps gradient."""
    out = torch.full(select_BT.shape, fill, dtype=values_N.dtype, device=values_N.device)
    return out.masked_scatter(select_BT.to(values_N.device), values_N)


def score(
    model: nn.Module,
    batch: ScoringBatch,
    select_BT: Tensor | None = None,
    topk: int | None = None,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
    entropy: bool = False,
    token_logprobs: bool = True,
) -> Scored:
    """Score a batch with a transformers causal LM: sampled-token log-probs everywhere, hidden
    states (and optionally top-k) only at `select_BT`.

    Gradient follows the caller: call under `torch.no_grad()` for a teacher, normally for the
    student (then `logprobs_BT` and `hidden_NH` carry gradient and every LM-head chunk is
    checkpointed). Peak memory beyond the transformer body is O(chunk_rows · V).
    `token_logprobs=False` skips the sampled-token pass (a TRACE teacher only needs the span
    distributions); `logprobs_BT` is then None.
    """
    _, head = decoder_and_head(model)
    hidden_BTH = response_hidden(model, batch)
    device = hidden_BTH.device
    rmask = batch.response_mask_BT.to(device)
    lp_M, ent_M = None, None
    if token_logprobs or entropy:
        lp_M, ent_M = chunked_token_logprobs(hidden_BTH[rmask], batch.response_ids_BT.to(device)[rmask], head, chunk_rows, entropy)
    sel = torch.zeros_like(rmask) if select_BT is None else (select_BT.to(device).bool() & rmask)
    hidden_NH = hidden_BTH[sel]
    top_lp, top_ids = (None, None)
    if topk:
        top_lp, top_ids = chunked_topk(hidden_NH, head, topk, chunk_rows)
    return Scored(
        logprobs_BT=rows_to_BT(lp_M, rmask) if token_logprobs and lp_M is not None else None,
        response_mask_BT=rmask,
        select_BT=sel,
        entropy_BT=rows_to_BT(ent_M, rmask) if ent_M is not None else None,
        hidden_NH=hidden_NH,
        head=head,
        topk_logprobs_NK=top_lp,
        topk_ids_NK=top_ids,
    )


def span_kl(
    student: Scored,
    teacher: Scored,
    *,
    direction: str = "forward",
    term_clip: float | None = None,
    topk: int | None = None,
    tail: bool = False,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
) -> Tensor:
    """Per-row KL (nats) at the selected positions, [N], gradient through the student only.

    direction "forward" = KL(q‖p) (key spans), "reverse" = KL(p‖q) (error spans). With `topk`
    (or a teacher that only has top-k, e.g. vLLM) the gradient-correct top-k estimators are used:
    forward on the teacher's top-k (optionally with a tail bucket); reverse on the student's top-k
    when the teacher's full distribution is at hand, else on the teacher's top-k ids. Computed one
    row chunk at a time under checkpointing, so no [N, V] tensor is ever held.
    """
    if direction not in ("forward", "reverse"):
        raise ValueError(f"span_kl: direction must be 'forward' or 'reverse', not {direction!r}")
    if student.hidden_NH is None or student.head is None:
        raise ValueError("span_kl: the student side must come from a transformers scorer (hidden states)")
    s_h = student.hidden_NH
    teacher_full = teacher.hidden_NH is not None and teacher.head is not None
    if teacher_full:
        t_rows: Tensor = teacher.hidden_NH  # type: ignore[assignment]
    elif teacher.topk_logprobs_NK is not None and teacher.topk_ids_NK is not None:
        t_rows = teacher.topk_logprobs_NK
    else:
        raise ValueError("span_kl: the teacher returned neither hidden states nor top-k log-probs")
    if t_rows.shape[0] != s_h.shape[0]:
        raise ValueError(f"span_kl: student has {s_h.shape[0]} selected rows but teacher has {t_rows.shape[0]}")
    t_rows = t_rows.to(s_h.device)
    t_ids = teacher.topk_ids_NK.to(s_h.device) if teacher.topk_ids_NK is not None else None
    s_head, t_head = student.head, teacher.head

    def one(h_s: Tensor, t: Tensor, ids: Tensor | None) -> Tensor:
        s_logits = s_head(h_s)  # [C, V]
        if teacher_full:
            with torch.no_grad():
                t_logits = t_head(t).float()  # type: ignore[misc]
            if topk is None:
                return (forward_kl if direction == "forward" else reverse_kl)(t_logits, s_logits, term_clip)
            if direction == "reverse":
                return topk_reverse_kl(t_logits, s_logits, topk, term_clip=term_clip)
            t_top = torch.topk(torch.log_softmax(t_logits, dim=-1), topk, dim=-1)
            return topk_forward_kl(t_top.values, t_top.indices, s_logits, tail=tail, term_clip=term_clip)
        if direction == "forward":
            return topk_forward_kl(t, ids, s_logits, tail=tail, term_clip=term_clip)  # type: ignore[arg-type]
        return topk_reverse_kl(t, s_logits, teacher_ids_NK=ids, term_clip=term_clip)

    chunk_rows = resolve_chunk_rows(chunk_rows, s_head)
    parts = []
    for i in range(0, s_h.shape[0], chunk_rows):
        sl = slice(i, i + chunk_rows)
        args = (s_h[sl], t_rows[sl]) + ((t_ids[sl],) if t_ids is not None and not teacher_full else ())
        if len(args) == 2:
            parts.append(_maybe_checkpoint(lambda a, b: one(a, b, None), *args))
        else:
            parts.append(_maybe_checkpoint(one, *args))
    return torch.cat(parts) if parts else s_h.new_zeros((0,)).float()  # type: ignore[arg-type]
