"""Benchmark: the spanroute Store (Lance) against raw pyarrow Parquet and Arrow IPC, same run.

Synthetic rollouts (default 200k rows x ~1k tokens; token ids int32 + log-probs float32, a response
text, spans on every 4th row). Measured, each in seconds and as a ratio to both baselines:

- write:          Store.write (schema check, span check, one commit) vs pq.write_table vs IPC file
- full scan:      every column into an Arrow table (IPC is memory-mapped: the zero-copy limit)
- token scan:     response_token_ids + response_logprobs only
- 1k random take: 1,000 random rows (Lance take; Parquet must read then take; IPC mmap take)
- add columns:    three annotation columns for every row (Store.add_columns writes only them;
                  Parquet / IPC have to rewrite the whole file); bytes written reported too
- update spans:   Store.update of the spans column on 1/4 of the rows (Parquet/IPC: rewrite)

Ends with ONE JSON line of the figures. `--quick` runs a small size in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datastore import Store  # noqa: E402
from datastore.schema import ROLLOUT_SCHEMA  # noqa: E402

WORDS = "let x be the sum of a and b then multiply by c so the answer is".split()


def synthetic(n: int, tokens: int, seed: int = 0) -> pa.Table:
    """``n`` rollouts of ~``tokens`` tokens (uniform in [0.75, 1.25] x tokens)."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(int(tokens * 0.75), int(tokens * 1.25) + 1, size=n).astype(np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    ids = pa.array(rng.integers(0, 50_000, size=int(offsets[-1]), dtype=np.int32))
    lps = pa.array(-rng.exponential(1.0, size=int(offsets[-1])).astype(np.float32))
    tok_ids = pa.ListArray.from_arrays(pa.array(offsets), ids, type=pa.list_(pa.int32()))
    tok_lps = pa.ListArray.from_arrays(pa.array(offsets), lps, type=pa.list_(pa.float32()))
    templates = [" ".join(rng.choice(WORDS, size=max(8, tokens // 4))) for _ in range(64)]
    responses = [f"{i}: {templates[i % 64]}" for i in range(n)]
    spans = [
        [{"start": 0, "end": len(str(i)), "label": "key", "source": "rule", "annotator": "bench",
          "text": str(i)}] if i % 4 == 0 else None
        for i in range(n)
    ]
    cols = {
        "rollout_id": pa.array([f"r{i:08d}" for i in range(n)]),
        "prompt_id": pa.array([f"p{i // 8}" for i in range(n)]),
        "group_id": pa.array([f"p{i // 8}-g" for i in range(n)]),
        "prompt": pa.array([f"Problem {i // 8}" for i in range(n)]),
        "response": pa.array(responses),
        "response_token_ids": tok_ids,
        "response_logprobs": tok_lps,
        "reward": pa.array(rng.random(n).astype(np.float32)),
        "correct": pa.array(rng.random(n) > 0.5),
        "spans": pa.array(spans, ROLLOUT_SCHEMA.field("spans").type),
    }
    fields = [ROLLOUT_SCHEMA.field(c) for c in cols]
    return pa.Table.from_arrays(list(cols.values()), schema=pa.schema(fields, metadata=ROLLOUT_SCHEMA.metadata))


def touch(t: pa.Table) -> float:
    """A checksum over the token columns (and response bytes when present): reads every page."""
    import pyarrow.compute as pc

    total = 0.0
    for c in ("response_token_ids", "response_logprobs"):
        total += pc.sum(pc.list_flatten(t.column(c))).as_py() or 0
    if "response" in t.column_names:
        total += pc.sum(pc.binary_length(t.column("response"))).as_py() or 0
    return total


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(n: int, tokens: int, workdir: Path) -> dict:
    """Every measured operation on one store of `n` rows, in order, each against its baseline in
    the same run; one long function on purpose, so the sequence reads as the benchmark's script."""
    _, table = timed(lambda: synthetic(n, tokens))
    store = Store(workdir / "store")
    pq_path, ipc_path = workdir / "r.parquet", workdir / "r.arrow"
    res: dict[str, dict[str, float]] = {}

    def ipc_write(t: pa.Table, path: Path) -> None:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
            w.write_table(t, max_chunksize=64 * 1024)

    def ipc_read(path: Path) -> pa.Table:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()

    res["write"] = {
        "lance": timed(lambda: store.write(table, message="bench"))[0],
        "parquet": timed(lambda: pq.write_table(table, pq_path))[0],
        "ipc": timed(lambda: ipc_write(table, ipc_path))[0],
    }
    del table
    # Scans touch the bytes (a checksum), else a memory-mapped IPC "read" would cost nothing.
    res["full_scan"] = {
        "lance": timed(lambda: touch(store.read()))[0],
        "parquet": timed(lambda: touch(pq.read_table(pq_path)))[0],
        "ipc": timed(lambda: touch(ipc_read(ipc_path)))[0],
    }
    tok = ["response_token_ids", "response_logprobs"]
    res["token_scan"] = {
        "lance": timed(lambda: touch(store.read(columns=tok)))[0],
        "parquet": timed(lambda: touch(pq.read_table(pq_path, columns=tok)))[0],
        "ipc": timed(lambda: touch(ipc_read(ipc_path).select(tok)))[0],
    }
    idx = np.sort(np.random.default_rng(1).choice(n, size=min(1000, n), replace=False))
    ds = store.dataset()
    res["take_1k"] = {
        "lance": timed(lambda: ds.take(idx).num_rows)[0],
        "parquet": timed(lambda: pq.read_table(pq_path).take(idx).num_rows)[0],
        "ipc": timed(lambda: ipc_read(ipc_path).take(idx).num_rows)[0],
    }

    ids = pa.array([f"r{i:08d}" for i in range(n)])
    new_cols = {
        "judge_score": pa.array(np.random.default_rng(2).random(n).astype(np.float32)),
        "judge_label": pa.array(["ok" if i % 3 else "bad" for i in range(n)]),
        "judge_note": pa.array([f"note {i}" for i in range(n)]),
    }
    lance_before = dir_bytes(Path(store.uri))
    add_tbl = pa.table({"rollout_id": ids, **new_cols})

    def rewrite_parquet(extra: dict) -> None:
        t = pq.read_table(pq_path)
        for k, v in extra.items():
            t = t.append_column(k, v) if k not in t.column_names else t.set_column(t.column_names.index(k), k, v)
        pq.write_table(t, workdir / "r2.parquet")
        os.replace(workdir / "r2.parquet", pq_path)

    def rewrite_ipc(extra: dict) -> None:
        t = ipc_read(ipc_path)
        for k, v in extra.items():
            t = t.append_column(k, v) if k not in t.column_names else t.set_column(t.column_names.index(k), k, v)
        ipc_write(t, workdir / "r2.arrow")
        os.replace(workdir / "r2.arrow", ipc_path)

    pq_before, ipc_before = dir_bytes(pq_path), dir_bytes(ipc_path)
    res["add_3_columns"] = {
        "lance": timed(lambda: store.add_columns(add_tbl, message="bench add"))[0],
        "parquet": timed(lambda: rewrite_parquet(new_cols))[0],
        "ipc": timed(lambda: rewrite_ipc(new_cols))[0],
    }
    written = {
        "lance": dir_bytes(Path(store.uri)) - lance_before,
        "parquet": dir_bytes(pq_path),  # the whole file is rewritten
        "ipc": dir_bytes(ipc_path),
    }
    sel = np.arange(0, n, 4)
    upd_spans = pa.array(
        [[{"start": 0, "end": 1, "label": "error", "source": "api", "annotator": "bench2", "text": str(i)[0]}]
         for i in sel], ROLLOUT_SCHEMA.field("spans").type)
    upd = pa.table({"rollout_id": ids.take(pa.array(sel)), "spans": upd_spans})
    full_spans = pa.array([None] * n, ROLLOUT_SCHEMA.field("spans").type)  # parquet/ipc must rebuild the column
    res["update_spans"] = {
        "lance": timed(lambda: store.update(upd, message="bench update"))[0],
        "parquet": timed(lambda: rewrite_parquet({"spans": full_spans}))[0],
        "ipc": timed(lambda: rewrite_ipc({"spans": full_spans}))[0],
    }
    return {
        "rows": n,
        "tokens_mean": tokens,
        "bytes": {"lance": dir_bytes(Path(store.uri)), "parquet": pq_before, "ipc": ipc_before},
        "add_columns_bytes_written": written,
        "seconds": res,
        "ratio_vs_parquet": {k: round(v["lance"] / v["parquet"], 4) for k, v in res.items()},
        "ratio_vs_ipc": {k: round(v["lance"] / v["ipc"], 4) for k, v in res.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--tokens", type=int, default=1000, help="mean tokens per rollout")
    ap.add_argument("--quick", action="store_true", help="20k rows x 256 tokens (< 1 minute)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    n, tokens = (20_000, 256) if args.quick else (args.rows, args.tokens)
    work = Path(tempfile.mkdtemp(prefix="bench-datastore-", dir=args.workdir))
    try:
        out = run(n, tokens, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"datastore: {n:,} rollouts x ~{tokens} tokens (seconds; ratio = Lance / baseline)")
    for c in ("operation", "Lance store", "Parquet", "Arrow IPC", "vs Parquet", "vs IPC"):
        t.add_column(c, justify="right" if c != "operation" else "left")
    for k, v in out["seconds"].items():
        t.add_row(k, f"{v['lance']:.3f}", f"{v['parquet']:.3f}", f"{v['ipc']:.3f}",
                  f"{out['ratio_vs_parquet'][k]:.3f}", f"{out['ratio_vs_ipc'][k]:.3f}")
    Console(stderr=True).print(t)
    mb = {k: round(v / 1e6, 1) for k, v in out["add_columns_bytes_written"].items()}
    Console(stderr=True).print(f"add_columns bytes written (MB): {mb}; dataset sizes (MB): "
                               f"{ {k: round(v / 1e6, 1) for k, v in out['bytes'].items()} }")
    out["seconds"] = {k: {b: round(s, 4) for b, s in v.items()} for k, v in out["seconds"].items()}
    print(json.dumps({"bench": "datastore", **out}))


if __name__ == "__main__":
    main()
