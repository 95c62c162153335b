"""Spans -> per-token routes (0 none, 1 key, 2 error), vectorised and batched, and back.

A token belongs to a span when its characters overlap it: ``tok_start < span_end and
tok_end > span_start`` (DESIGN §9: with byte-level BPE the leading space belongs to the next token,
and a multi-byte character split over several tokens gives each of them that character's offsets,
so every such token overlaps). Empty offsets — special tokens report ``(0, 0)`` — overlap nothing
and route 0. A token overlapping both a key and an error span routes 2: the error channel wins.

The batched form works on flat arrays: all rows' token offsets concatenated with ``row_splits``
(Arrow list offsets), and all spans as parallel arrays with their row index. Each span's first and
last token come from a searchsorted restricted to its row (:func:`rowwise_searchsorted`, a
vectorised bisection over all spans at once, equal to ``np.searchsorted`` on the row's slice), then
the covered ranges are painted: no Python loop over tokens or rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spans.model import CODE_LABELS, LABEL_CODES, Span, as_span


def token_routes(
    spans: Sequence[Span | dict], offset_mapping: Sequence[Sequence[int]] | np.ndarray, n_tokens: int
) -> np.ndarray:
    """Route of each of ``n_tokens`` tokens, ``int8[T]``, from code-point ``offset_mapping [T, 2]``."""
    om_T2 = np.asarray(offset_mapping, dtype=np.int64).reshape(-1, 2)
    if len(om_T2) != n_tokens:
        raise ValueError(f"token_routes: offset_mapping has {len(om_T2)} rows but n_tokens={n_tokens}")
    s = [as_span(x) for x in spans]
    return token_routes_flat(
        om_T2[:, 0], om_T2[:, 1], np.array([0, n_tokens], dtype=np.int64),
        np.array([x.start for x in s], dtype=np.int64), np.array([x.end for x in s], dtype=np.int64),
        np.array([LABEL_CODES[x.label] for x in s], dtype=np.int8), np.zeros(len(s), dtype=np.int64),
    )


def token_routes_batch(
    spans_rows: Sequence[Sequence[Span | dict] | None] | pa.Array | pa.ChunkedArray,
    offset_mappings: Sequence[Sequence[Sequence[int]] | np.ndarray],
) -> list[np.ndarray]:
    """Routes for many rollouts: one ``int8[T_i]`` per row (``T_i = len(offset_mappings[i])``).

    ``spans_rows`` is a list of span lists or the datastore's ``spans`` column (Arrow); for the
    fastest path build flat arrays once and call :func:`token_routes_flat`.
    """
    oms = [np.asarray(om, dtype=np.int64).reshape(-1, 2) for om in offset_mappings]
    lengths = np.array([len(om) for om in oms], dtype=np.int64)
    splits = np.zeros(len(oms) + 1, dtype=np.int64)
    np.cumsum(lengths, out=splits[1:])
    om_N2 = np.concatenate(oms) if oms else np.zeros((0, 2), dtype=np.int64)
    sp = span_arrays(spans_rows)
    if len(sp[0]) and sp[3].max() >= len(oms):
        raise ValueError(f"token_routes_batch: {sp[3].max() + 1} span rows but {len(oms)} offset rows")
    route_N = token_routes_flat(om_N2[:, 0], om_N2[:, 1], splits, *sp)
    return np.split(route_N, splits[1:-1])


def span_arrays(
    spans_rows: Sequence[Sequence[Span | dict] | None] | pa.Array | pa.ChunkedArray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flatten rows of spans into ``(start_S, end_S, code_S, row_S)``; Arrow input stays vectorised."""
    if isinstance(spans_rows, (pa.Array, pa.ChunkedArray)):
        col = spans_rows.combine_chunks() if isinstance(spans_rows, pa.ChunkedArray) else spans_rows
        col = col.fill_null(pa.scalar([], type=col.type))
        row_S = pc.list_parent_indices(col).to_numpy().astype(np.int64)
        flat = pc.list_flatten(col)
        label = flat.field("label")
        code_S = (pc.equal(label, "key").to_numpy(zero_copy_only=False).astype(np.int8)
                  + 2 * pc.equal(label, "error").to_numpy(zero_copy_only=False).astype(np.int8))
        if len(code_S) and code_S.min() == 0:
            bad = pc.filter(label, pc.equal(pa.array(code_S), 0))[0]
            raise ValueError(f"span label {bad.as_py()!r} is not 'key' or 'error'")
        return (flat.field("start").to_numpy().astype(np.int64),
                flat.field("end").to_numpy().astype(np.int64), code_S, row_S)
    start, end, code, row = [], [], [], []
    for r, row_spans in enumerate(spans_rows):
        for x in row_spans or ():
            x = as_span(x)
            start.append(x.start)
            end.append(x.end)
            code.append(LABEL_CODES[x.label])
            row.append(r)
    return (np.array(start, dtype=np.int64), np.array(end, dtype=np.int64),
            np.array(code, dtype=np.int8), np.array(row, dtype=np.int64))


def token_routes_flat(
    tok_start_N: np.ndarray,
    tok_end_N: np.ndarray,
    row_splits: np.ndarray,
    span_start_S: np.ndarray,
    span_end_S: np.ndarray,
    span_code_S: np.ndarray,
    span_row_S: np.ndarray,
    span_tokens_S: np.ndarray | None = None,
) -> np.ndarray:
    """Routes ``int8[N]`` for a batch given flat arrays (code points, end exclusive).

    ``tok_start_N``/``tok_end_N``: every row's token offsets, concatenated; ``row_splits [B+1]``:
    row ``b`` owns tokens ``row_splits[b]:row_splits[b+1]``; spans as parallel arrays with
    ``span_code_S`` 1 (key) or 2 (error) and ``span_row_S`` the row each belongs to.
    ``span_tokens_S``, when given (an int64 array of S), receives how many non-empty tokens each
    span overlaps — 0 means the span routes no token (the shard builder refuses such a span).
    """
    s_N = np.asarray(tok_start_N)
    e_N = np.asarray(tok_end_N)
    splits = np.asarray(row_splits, dtype=np.int64)
    n = len(s_N)
    route_N = np.zeros(n, dtype=np.int8)
    if span_tokens_S is not None:
        span_tokens_S[:] = 0
    if n == 0 or len(span_start_S) == 0:
        return route_N
    empty_idx = np.flatnonzero(s_N >= e_N)
    first_B, stop_B, edge, inner = splits[:-1], splits[1:], empty_idx[:0], empty_idx[:0]
    if len(empty_idx):
        # Specials at a row's start or end (BOS/EOS, the usual case) are simply left out of the
        # searched range; only specials between real tokens need sorted stand-in offsets (a copy).
        first_B, stop_B, edge, inner = _real_token_range(splits, empty_idx)
        if len(inner):
            s_N, e_N = _fill_empty(s_N, e_N, splits, inner)
    if not (_sorted_within_rows(s_N, splits, edge) and _sorted_within_rows(e_N, splits, edge)):
        return _routes_broadcast(tok_start_N, tok_end_N, splits, span_start_S, span_end_S,
                                 span_code_S, span_row_S, span_tokens_S)
    row_S = np.asarray(span_row_S, dtype=np.int64)
    first_S, stop_S = first_B[row_S], stop_B[row_S]
    # First token ending after the span starts, first token starting at/after the span ends.
    lo_S = rowwise_searchsorted(e_N, first_S, stop_S, np.asarray(span_start_S), side="right")
    hi_S = rowwise_searchsorted(s_N, first_S, stop_S, np.asarray(span_end_S), side="left")
    code_S = np.asarray(span_code_S, dtype=np.int8)
    for code in (1, 2):  # paint key first, then error, so error wins a shared token
        sel = code_S == code
        _paint(route_N, lo_S[sel], hi_S[sel], code)
    route_N[empty_idx] = 0
    if span_tokens_S is not None:  # tokens in [lo, hi) less the specials among them
        span_tokens_S[:] = np.maximum(hi_S - lo_S, 0) - np.maximum(
            np.searchsorted(inner, hi_S) - np.searchsorted(inner, lo_S), 0)
    return route_N


def _real_token_range(splits, empty_idx):
    """Per row, ``[first, stop)`` without its leading and trailing empty tokens; those empty tokens
    (``edge``) and the ones that sit between real tokens (``inner``). O(rows + specials)."""
    row_E = np.searchsorted(splits, empty_idx, side="right") - 1
    n_B = len(splits) - 1
    count_B = np.bincount(row_E, minlength=n_B)
    first_in_E = np.searchsorted(row_E, row_E, side="left")  # index in empty_idx of the row's first
    rank_E = np.arange(len(empty_idx)) - first_in_E
    lead_E = empty_idx - splits[row_E] == rank_E
    trail_E = (splits[row_E + 1] - 1 - empty_idx) == (count_B[row_E] - 1 - rank_E)
    lead_B = np.bincount(row_E[lead_E], minlength=n_B)
    trail_B = np.bincount(row_E[trail_E & ~lead_E], minlength=n_B)
    first_B = splits[:-1] + lead_B
    stop_B = np.maximum(splits[1:] - trail_B, first_B)
    at_edge = lead_E | trail_E
    return first_B, stop_B, empty_idx[at_edge], empty_idx[~at_edge]


def _fill_empty(s_N, e_N, splits, empty_idx):
    """Copies of the offsets where each empty token (a special, usually (0, 0)) takes the offsets
    of the last non-empty token before it in its row, or (0, 0) at the row's start, so both arrays
    stay sorted within rows. Sparse: O(N) copies plus O(specials) work."""
    def is_empty(i):  # membership in the sorted empty_idx, without an N-long mask
        pos = np.minimum(np.searchsorted(empty_idx, i), len(empty_idx) - 1)
        return (i >= 0) & (empty_idx[pos] == i)

    src = empty_idx - 1
    back = is_empty(src)
    while back.any():  # runs of specials: walk back to the last real token
        src[back] -= 1
        back = is_empty(src)
    row_start = splits[np.searchsorted(splits, empty_idx, side="right") - 1]
    in_row = src >= row_start
    take = np.maximum(src, 0)
    s_out, e_out = np.array(s_N, copy=True), np.array(e_N, copy=True)
    s_out[empty_idx] = np.where(in_row, s_N[take], 0)
    e_out[empty_idx] = np.where(in_row, e_N[take], 0)
    return s_out, e_out


def rowwise_searchsorted(
    x_N: np.ndarray, first_S: np.ndarray, stop_S: np.ndarray, q_S: np.ndarray, side: str = "left"
) -> np.ndarray:
    """``first + np.searchsorted(x[first:stop], q, side)`` for every query at once.

    A vectorised bisection: ``ceil(log2(longest row + 1))`` steps over the S queries, so the cost
    is O(S log T) gathers and the N-long arrays are never copied or shifted (a single global
    ``np.searchsorted`` would first need every row moved into its own coordinate range, which
    costs more than the searches). ``x`` must be non-decreasing on each ``[first, stop)``.
    """
    base = np.asarray(first_S, dtype=np.int64)
    n = np.asarray(stop_S, dtype=np.int64) - base
    q = np.asarray(q_S)
    if not len(base) or not len(x_N):
        return base.copy()
    below = np.less_equal if side == "right" else np.less  # "x[i] comes before q"
    # Branchless lower bound: halve each query's window until one element is left.
    while True:
        half = n >> 1
        if not half.any():
            break
        mid = base + half
        base = np.where(below(np.take(x_N, mid, mode="clip"), q), mid, base)
        n = n - half
    return base + ((n > 0) & below(np.take(x_N, base, mode="clip"), q))


def _paint(route_N: np.ndarray, lo: np.ndarray, hi: np.ndarray, code: int) -> None:
    """``route_N[lo[i]:hi[i]] = code`` for every i, in O(S + covered tokens)."""
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    if not len(lo):
        return
    lengths = hi - lo
    total = int(lengths.sum())
    starts_in_idx = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) + np.repeat(lo - starts_in_idx, lengths)
    route_N[idx] = code


def _sorted_within_rows(x_N: np.ndarray, splits: np.ndarray, edge_idx: np.ndarray) -> bool:
    """True when ``x`` never decreases inside the searched part of a row: a decrease at a row
    start, onto a leading/trailing empty token or just after one is fine (those are not searched)."""
    drops = np.flatnonzero(x_N[1:] < x_N[:-1]) + 1
    if not len(drops):
        return True
    ok = np.isin(drops, splits) | np.isin(drops, edge_idx) | np.isin(drops - 1, edge_idx)
    return bool(ok.all())


def _routes_broadcast(s_N, e_N, splits, a_S, b_S, code_S, row_S, tokens_S=None) -> np.ndarray:
    """Exact fallback for offsets that are not monotone within a row: per-row broadcasting."""
    s_N, e_N = np.asarray(s_N), np.asarray(e_N)
    route_N = np.zeros(len(s_N), dtype=np.int8)
    order = np.argsort(row_S, kind="stable")
    hits_S = np.zeros(len(order), dtype=np.int64)  # in `order`
    a_S, b_S, code_S, row_S = (np.asarray(x)[order] for x in (a_S, b_S, code_S, row_S))
    bounds = np.searchsorted(row_S, np.arange(len(splits)))
    for r in np.unique(row_S):
        t0, t1 = splits[r], splits[r + 1]
        k0, k1 = bounds[r], bounds[r + 1]
        s, e = s_N[t0:t1, None], e_N[t0:t1, None]
        hit_TS = (s < b_S[None, k0:k1]) & (e > a_S[None, k0:k1]) & (e > s)
        route_N[t0:t1] = np.where(hit_TS, code_S[None, k0:k1], 0).max(axis=1, initial=0)
        hits_S[k0:k1] = hit_TS.sum(axis=0)
    if tokens_S is not None:
        tokens_S[order] = hits_S
    return route_N


def routes_to_spans(
    routes: np.ndarray,
    offset_mapping: Sequence[Sequence[int]] | np.ndarray,
    text: str,
    source: str,
    annotator: str,
) -> list[Span]:
    """The inverse of :func:`token_routes`: each run of equal nonzero routes becomes one span.

    A run spans from its first token's start to its last token's end (tokens with empty offsets
    are skipped). Exact for spans whose edges fall on token edges.
    """
    om_T2 = np.asarray(offset_mapping, dtype=np.int64).reshape(-1, 2)
    routes = np.asarray(routes)
    real = om_T2[:, 0] < om_T2[:, 1]
    r, om = routes[real], om_T2[real]
    if not len(r):
        return []
    change = np.flatnonzero(np.diff(r.astype(np.int16))) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(r)]])
    out = []
    for a, b in zip(starts, ends):
        code = int(r[a])
        if code:
            cs, ce = int(om[a, 0]), int(om[b - 1, 1])
            out.append(Span(cs, ce, CODE_LABELS[code], source, annotator, text[cs:ce]))
    return out
