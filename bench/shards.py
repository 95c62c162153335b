"""Benchmark: ``spanroute shards build`` (a datastore version -> span-tagged training shards).

Measures, in the same run, on the same store version and tokenizer:
- **thing**: ``train.shards.build_shards`` as the CLI runs it — routes for a whole shard at once from
  the Arrow ``spans`` column (``spans.token_routes_flat``), tokenisation batched;
- **baseline**: the same build with the per-row path the builder used before (issue #17 item 4):
  ``table.to_pylist()``, then per row ``choose_spans`` -> ``response_offsets`` ->
  ``spans.token_routes`` -> ``check_routes`` -> Python lists, one tokenizer call per prompt.

Both builds must write byte-identical shards (the manifests' sha256 are compared; the run fails
otherwise). The store holds toy-world rollouts (``train.toy``: chat prompts, reference solutions and
the ways toy rollouts go wrong, rule spans, the toy byte-level BPE tokenizer), ``reference`` teacher
prompts. Usage: ``python bench/shards.py`` (20k rollouts) or ``--quick`` (2k, under a minute).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import train.shards as S  # noqa: E402


def make_store(path: Path, tokenizer_dir: Path, rows: int, group: int, seed: int) -> int:
    """A store with one version of `rows` toy rollouts (groups of `group`); returns the version."""
    from transformers import AutoTokenizer

    from datastore import Store
    from datastore.schema import ROLLOUT_SCHEMA
    from train.toy import make_problems, render_prompt, toy_messages
    from train.toy.rule import rule_annotate
    from train.toy.sft import toy_response

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    out = []
    for p in make_problems(max(1, rows // group), seed=seed):
        prompt = render_prompt(p.question, tok)
        for j in range(group):
            text = toy_response(p, rng)
            correct = text.rstrip().endswith(p.reference.rsplit("Answer:", 1)[-1].strip())
            spans, error_type = rule_annotate(text, p.reference, correct)
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out.append(dict(
                rollout_id=f"r-{p.prompt_id}-{j}", prompt_id=p.prompt_id, group_id=f"g-{p.prompt_id}",
                prompt=prompt, messages=toy_messages(p.question), response=text, response_token_ids=ids,
                response_logprobs=(-nprng.random(len(ids), dtype=np.float32)).tolist(),
                reward=float(correct), correct=correct, verifier="toy-int", reference=p.reference, model="bench",
                sampling="{}", spans=[s.to_dict() for s in spans], error_type=error_type))
    st = Store(str(path))
    return st.write(pa.Table.from_pylist(out, schema=ROLLOUT_SCHEMA), message="bench rollouts")


def _tokenize(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def rows_to_shard_per_row(table: pa.Table, tokenizer, *, span_source: str = "auto",
                          templates: tuple[str, ...] = ("reference",)) -> pa.Table:
    """The baseline: the builder's former per-row path (Python dicts, one route call per row)."""
    from spans import token_routes

    out: dict[str, list] = {f.name: [] for f in S.shard_schema(templates)}
    for row in table.to_pylist():
        ids, lps = row["response_token_ids"], row["response_logprobs"]
        spans, used = S.choose_spans(row.get("spans"), span_source)
        offsets = S.response_offsets(tokenizer, row["response"], ids)
        route = np.asarray(token_routes(spans, offsets, len(ids)), dtype=np.int8) if spans else \
            np.zeros(len(ids), dtype=np.int8)
        S.check_routes(spans, offsets, route, f"rollout {row['rollout_id']}")
        for k, v in (("rollout_id", row["rollout_id"]), ("group_id", row["group_id"]),
                     ("prompt_id", row["prompt_id"]), ("prompt_ids", _tokenize(tokenizer, row["prompt"])),
                     ("response_ids", list(ids)), ("old_logprobs", list(lps)), ("reward", float(row["reward"])),
                     ("correct", bool(row["correct"])), ("route", route.tolist()), ("span_source", used)):
            out[k].append(v)
        for t in templates:
            out[f"teacher_prompt_ids_{t}"].append(_tokenize(tokenizer, S.teacher_prompt_text(tokenizer, row, t)))
    return pa.table(out, schema=S.shard_schema(templates))


def timed_build(store: Path, version: int, tokenizer_dir: Path, out: Path, rows_per_shard: int,
                per_row: bool) -> tuple[float, dict]:
    real = S.rows_to_shard
    S.rows_to_shard = rows_to_shard_per_row if per_row else real
    try:
        t = time.perf_counter()
        manifest = S.build_shards(store, version, tokenizer_dir, out, rows_per_shard=rows_per_shard)
        return time.perf_counter() - t, manifest
    finally:
        S.rows_to_shard = real


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000, help="rollouts in the store version")
    p.add_argument("--group", type=int, default=8, help="rollouts per prompt group")
    p.add_argument("--rows-per-shard", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2, help="builds of each kind; the best is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2k rollouts: under a minute")
    args = p.parse_args()
    if args.quick:
        args.rows, args.rows_per_shard = 2_000, 512

    from train.toy import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = tmp / "tokenizer"
        build_tokenizer(tok_dir)
        t = time.perf_counter()
        version = make_store(tmp / "store", tok_dir, args.rows, args.group, args.seed)
        t_store = time.perf_counter() - t
        times: dict[str, float] = {}
        manifests: dict[str, dict] = {}
        for r in range(args.repeat):
            for kind in ("baseline", "thing"):
                dt, manifests[kind] = timed_build(tmp / "store", version, tok_dir, tmp / f"{kind}-{r}",
                                                  args.rows_per_shard, per_row=kind == "baseline")
                times[kind] = min(times.get(kind, float("inf")), dt)
    a, b = manifests["thing"], manifests["baseline"]
    identical = [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]] and \
        a["routed_span_tokens"] == b["routed_span_tokens"]
    n = a["rows"]
    figures = {
        "rows": n, "shards": len(a["shards"]), "response_tokens": a["response_tokens"],
        "span_token_fraction": round(a["span_token_fraction"], 4), "store_write_s": round(t_store, 2),
        "baseline_s": round(times["baseline"], 3), "thing_s": round(times["thing"], 3),
        "rows_per_s_baseline": round(n / times["baseline"]), "rows_per_s": round(n / times["thing"]),
        "speedup": round(times["baseline"] / times["thing"], 2), "byte_identical": identical,
    }
    print(f"shards build: {n} toy rollouts, {a['response_tokens']:,} response tokens "
          f"({figures['span_token_fraction']:.1%} routed), {len(a['shards'])} shard(s), best of {args.repeat}")
    print(f"{'method':46s} {'seconds':>9s} {'rollouts/s':>12s}")
    for name, key in (("per-row path (baseline)", "baseline"), ("batched routes + tokenisation (build_shards)", "thing")):
        print(f"{name:46s} {times[key]:9.3f} {n / times[key]:12,.0f}")
    print(f"speedup {figures['speedup']:.2f}x; shards byte-identical: {identical}")
    print(json.dumps(figures))
    if not identical:
        raise SystemExit("the two builds wrote different shards")


if __name__ == "__main__":
    main()
