"""Toy-arithmetic rollouts for annotation tests, made here so these tests need no other package."""

from __future__ import annotations

import hashlib
import random

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _solution(a: int, b: int, c: int, op1: str, op2: str) -> tuple[list[str], int]:
    r1 = OPS[op1](a, b)
    r2 = OPS[op2](r1, c)
    return [f"{a} {op1} {b} = {r1}", f"{r1} {op2} {c} = {r2}"], r2


def toy_records(n: int, seed: int = 0, group: int = 4) -> list[dict]:
    """`n` rollouts, `group` per prompt, about half incorrect (arithmetic slips, wrong operations,
    a wrong Answer line), in the toy format: one step per line, then `Answer: N`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % group == 0:
            a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
            op1, op2 = rng.choice("+-"), "*"
            ref_steps, ref_ans = _solution(a, b, c, op1, op2)
            pid = f"p{i // group:04d}"
            question = f"Compute ({a} {op1} {b}) {op2} {c}."
        kind = rng.choice(["ok", "ok", "arith1", "arith2", "wrong_op", "answer"])
        steps, ans = list(ref_steps), ref_ans
        r1 = OPS[op1](a, b)
        if kind == "arith1":
            bad = r1 + rng.choice([-1, 1, 10])
            steps = [f"{a} {op1} {b} = {bad}", f"{bad} {op2} {c} = {bad * c}"]
            ans = bad * c
        elif kind == "arith2":
            steps = [steps[0], f"{r1} {op2} {c} = {r1 * c + 1}"]
            ans = r1 * c + 1
        elif kind == "wrong_op":
            steps = [steps[0], f"{r1} + {c} = {r1 + c}"]
            ans = r1 + c
        elif kind == "answer":
            ans = ref_ans + 3
        response = "\n".join(steps) + f"\nAnswer: {ans}"
        rid = hashlib.sha256(f"{pid}|{response}|{i}".encode()).hexdigest()[:16]
        out.append({
            "rollout_id": rid, "prompt_id": pid, "group_id": pid, "prompt": question,
            "response": response, "correct": ans == ref_ans, "reward": float(ans == ref_ans),
            "reference": "\n".join(ref_steps) + f"\nAnswer: {ref_ans}", "model": "toy", "spans": [],
            "error_type": None, "skill": None, "kind": kind,
        })
    return out


def make_store(path, n: int, seed: int = 0):
    """A store whose version 1 holds `n` toy rollouts (about half incorrect)."""
    import pyarrow as pa

    from datastore import Lineage, Store
    from datastore.schema import ROLLOUT_SCHEMA

    names = {f.name for f in ROLLOUT_SCHEMA}
    rows = [{k: v for k, v in r.items() if k in names} for r in toy_records(n, seed=seed)]
    st = Store(path)
    st.write(pa.Table.from_pylist(rows), message="toy rollouts", lineage=Lineage(stage="generate", model="toy"))
    return st


def annotated(st) -> list[dict]:
    """The columns an annotation job writes, sorted by rollout_id."""
    rows = st.read(columns=["rollout_id", "spans", "error_type", "annotation"]).to_pylist()
    return sorted(rows, key=lambda r: r["rollout_id"])


def api_args(store, url: str, *extra: str) -> list[str]:
    return ["annotate", "api", "--store", str(store), "--base-url", url, "--model", "scripted",
            "--price-in", "1", "--price-out", "2", "--concurrency", "8", "--timeout", "5", "--no-progress", *extra]


def ev(row: dict, annotator: str | None = None) -> dict:
    """A row's evidence entry of `annotator` (or its only entry) in the per-annotator `annotation` list."""
    entries = row["annotation"] or []
    if annotator is None:
        assert len(entries) == 1, entries
        return entries[0]
    return next(e for e in entries if e["annotator"] == annotator)
