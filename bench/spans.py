"""Benchmark: spans -> per-token routes for a batch of rollouts (DESIGN §4, issue #3).

Measures, in the same run and on the same arrays:
- **thing (flat)**: ``token_routes_flat`` on the batch's flat token offsets (Arrow list layout:
  concatenated offsets + row splits) and flat span arrays — the path the shard builder uses;
- **thing (arrow)**: the same from the datastore's ``spans`` column (``span_arrays`` + flat);
- **bound**: a bare ``np.searchsorted`` lower bound — the two searchsorted calls that find every
  span's first and last token, over token offsets already shifted into one globally sorted int64
  array (that shift is prepared outside the timer), with no checks and no output written;
- **loop**: a naive per-token Python loop (for each token, for each span of its row), timed on a
  subset of rows and scaled linearly to the whole batch.

Each row ends with an end-of-sequence special token with offsets (0, 0), as response offsets do.
Usage: ``python bench/spans.py`` (100k rollouts x ~1k tokens x ~4 spans) or ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `spans` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from spans import SPANS_TYPE, span_arrays, token_routes_flat  # noqa: E402


def make_chunk(rng: np.random.Generator, rows: int, tokens: int, spans: int):
    """Random rollouts: token lengths 1-7 chars, ~``tokens`` per row (+ an EOS at (0, 0)),
    2..2*spans-2 spans per row (mean ``spans``) on token edges of 1-40 tokens, labels at random."""
    n_T = rng.integers(tokens // 2, tokens * 3 // 2 + 1, size=rows)
    n_T_eos = n_T + 1
    splits = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(n_T_eos, out=splits[1:])
    n = int(splits[-1])
    lens = rng.integers(1, 8, size=n).astype(np.int32)
    eos = splits[1:] - 1
    lens[eos] = 0
    row_of = np.repeat(np.arange(rows), n_T_eos)
    ends = np.cumsum(lens, dtype=np.int64)
    row_base = np.concatenate([[0], ends[eos]])[:-1]  # chars before each row
    e_N = (ends - row_base[row_of]).astype(np.int32)
    s_N = e_N - lens
    s_N[eos] = 0
    e_N[eos] = 0
    n_S = rng.integers(2, 2 * spans - 1, size=rows)
    span_row = np.repeat(np.arange(rows), n_S)
    first = rng.integers(0, (n_T - 41)[span_row].clip(1))
    width = rng.integers(1, 41, size=len(span_row))
    t0 = splits[span_row] + first
    t1 = np.minimum(t0 + width, splits[span_row] + n_T[span_row]) - 1
    a, b = s_N[t0].astype(np.int64), e_N[t1].astype(np.int64)
    code = rng.integers(1, 3, size=len(span_row)).astype(np.int8)
    return s_N, e_N, splits, a, b, code, span_row.astype(np.int64)


def spans_column(a, b, code, row, rows: int) -> pa.Array:
    """The datastore's ``spans`` column for these spans (text is not read by routing)."""
    labels = np.where(code == 1, "key", "error")
    struct = pa.StructArray.from_arrays(
        [pa.array(a, pa.int32()), pa.array(b, pa.int32()), pa.array(labels),
         pa.array(np.full(len(a), "api")), pa.array(np.full(len(a), "bench")), pa.array(np.full(len(a), "x"))],
        fields=list(SPANS_TYPE.value_type),
    )
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(row, minlength=rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), struct, type=SPANS_TYPE)


def naive_loop(s_N, e_N, splits, a, b, code, row, rows: int) -> list[np.ndarray]:
    """The baseline: Python over every token and every span of its row."""
    out = []
    bounds = np.searchsorted(row, np.arange(rows + 1))
    s_l, e_l, a_l, b_l, c_l = s_N.tolist(), e_N.tolist(), a.tolist(), b.tolist(), code.tolist()
    for r in range(rows):
        spans = list(zip(a_l[bounds[r]:bounds[r + 1]], b_l[bounds[r]:bounds[r + 1]],
                         c_l[bounds[r]:bounds[r + 1]]))
        routes = []
        for t in range(splits[r], splits[r + 1]):
            ts, te = s_l[t], e_l[t]
            v = 0
            for sa, sb, c in spans:
                if ts < te and ts < sb and te > sa and c > v:
                    v = c
            routes.append(v)
        out.append(np.array(routes, dtype=np.int8))
    return out


def best_of(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rollouts in the batch")
    p.add_argument("--tokens", type=int, default=1000, help="mean response tokens per rollout")
    p.add_argument("--spans", type=int, default=4, help="mean spans per rollout")
    p.add_argument("--chunk", type=int, default=10_000, help="rollouts routed per call (memory bound)")
    p.add_argument("--loop-rows", type=int, default=200, help="rollouts timed with the naive loop")
    p.add_argument("--repeat", type=int, default=3, help="timings per chunk; the best is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="20k rollouts, 100 loop rows: under a minute")
    args = p.parse_args()
    if args.quick:
        args.rows, args.loop_rows, args.repeat = 20_000, 100, 2

    rng = np.random.default_rng(args.seed)
    t_flat = t_arrow = t_bound = 0.0
    n_tokens = n_spans = covered = 0
    loop_checked = False
    t_loop_subset = 0.0
    done = 0
    while done < args.rows:
        rows = min(args.chunk, args.rows - done)
        s_N, e_N, splits, a, b, code, row = make_chunk(rng, rows, args.tokens, args.spans)
        col = spans_column(a, b, code, row, rows)
        dt, route_N = best_of(args.repeat, lambda: token_routes_flat(s_N, e_N, splits, a, b, code, row))
        t_flat += dt
        dt, route2 = best_of(args.repeat, lambda: token_routes_flat(s_N, e_N, splits, *span_arrays(col)))
        t_arrow += dt
        assert np.array_equal(route_N, route2)
        # The bound's inputs: one globally sorted coordinate (row r shifted by r*K), built untimed.
        k = int(e_N.max()) + 1
        shift = np.repeat(np.arange(rows, dtype=np.int64) * k, np.diff(splits))
        eos = splits[1:] - 1
        e_g = e_N + shift
        s_g = s_N + shift
        e_g[eos] = e_g[eos - 1]  # the EOS (0, 0) takes its neighbour's offsets to keep order
        s_g[eos] = s_g[eos - 1]
        qa, qb = a + row * k, b + row * k
        dt, _ = best_of(args.repeat, lambda: (np.searchsorted(e_g, qa, side="right"),
                                              np.searchsorted(s_g, qb, side="left")))
        t_bound += dt
        if not loop_checked:
            m = min(args.loop_rows, rows)
            sub = row < m
            sub_splits = splits[:m + 1]
            n_sub = int(sub_splits[-1])
            t = time.perf_counter()
            loop_routes = naive_loop(s_N[:n_sub], e_N[:n_sub], sub_splits, a[sub], b[sub], code[sub], row[sub], m)
            t_loop_subset = time.perf_counter() - t
            assert np.array_equal(np.concatenate(loop_routes), route_N[:sub_splits[-1]]), "routes != loop"
            loop_tokens = int(sub_splits[-1])
            loop_checked = True
        n_tokens += len(s_N)
        n_spans += len(a)
        covered += int(np.count_nonzero(route_N))
        done += rows
        del s_N, e_N, shift, e_g, s_g, route_N, route2, col

    t_loop = t_loop_subset * n_tokens / loop_tokens  # scaled by tokens routed
    figures = {
        "rows": args.rows, "tokens": n_tokens, "spans": n_spans,
        "routed_fraction": round(covered / n_tokens, 4),
        "flat_s": round(t_flat, 4), "arrow_s": round(t_arrow, 4), "bound_s": round(t_bound, 4),
        "loop_s_scaled": round(t_loop, 2), "loop_rows_timed": min(args.loop_rows, args.chunk),
        "rows_per_s": round(args.rows / t_flat), "rows_per_s_arrow": round(args.rows / t_arrow),
        "ratio_to_bound": round(t_flat / t_bound, 3), "ratio_to_bound_arrow": round(t_arrow / t_bound, 3),
        "speedup_vs_loop": round(t_loop / t_flat, 1),
    }
    print(f"spans -> token routes: {args.rows} rollouts, {n_tokens / 1e6:.1f}M tokens, {n_spans} spans "
          f"({figures['routed_fraction']:.1%} of tokens routed), chunks of {args.chunk}")
    print(f"{'method':42s} {'seconds':>10s} {'rollouts/s':>12s} {'x bound':>8s}")
    for name, t in [("token_routes_flat (flat arrays)", t_flat), ("span_arrays + flat (Arrow spans column)", t_arrow),
                    ("bound: bare np.searchsorted x2", t_bound),
                    (f"naive per-token loop (scaled from {figures['loop_rows_timed']})", t_loop)]:
        print(f"{name:42s} {t:10.3f} {args.rows / t:12,.0f} {t / t_bound:8.2f}")
    print(f"goal: within 3x of the bound -> {figures['ratio_to_bound']:.2f}x; "
          f">= 50x faster than the loop -> {figures['speedup_vs_loop']:.0f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
