"""Synthetic rollouts for the datastore tests: every column type, astral and ZWJ characters."""

from __future__ import annotations

import json

import pyarrow as pa

from datastore.schema import ROLLOUT_SCHEMA

# '𝑥' is one astral code point (two UTF-16 units); '👩‍💻' is three code points joined by a ZWJ.
RESPONSES = [
    "Let 𝑥 = 3.\nThen 𝑥 + 4 = 7.\nAnswer: 7 👩‍💻",
    "17 + 25 = 42\n42 * 3 = 126\nAnswer: 126",
    "Étape 1: ½ + ½ = 1 ✓\nAnswer: 1",
]


def span(response: str, piece: str, label: str = "key", source: str = "rule", annotator: str = "rule-v1") -> dict:
    start = response.index(piece)
    return {"start": start, "end": start + len(piece), "label": label, "source": source,
            "annotator": annotator, "text": piece}


def make_rows(n: int, start: int = 0, tag: str = "r") -> list[dict]:
    rows = []
    for i in range(start, start + n):
        resp = RESPONSES[i % len(RESPONSES)]
        k = i % len(RESPONSES)
        spans = [span(resp, "𝑥 + 4 = 7"), span(resp, "👩‍💻", "error", "human", "ann-7")] if k == 0 else (
            [span(resp, "42 * 3 = 126", "error", "api", "gpt")] if k == 1 else [])
        n_tok = 3 + i % 5
        rows.append({
            "rollout_id": f"{tag}{i:05d}",
            "prompt_id": f"p{i // 4}",
            "group_id": f"p{i // 4}-g0",
            "prompt": f"Problem {i // 4}: compute it.",
            "messages": [{"role": "user", "content": f"Problem {i // 4}: compute it."},
                         {"role": "assistant", "content": resp}],
            "response": resp,
            "response_token_ids": [(i * 7 + j) % 512 for j in range(n_tok)],
            "response_logprobs": [-0.25 * (j + 1) for j in range(n_tok)],
            "reward": float(i % 2),
            "correct": bool(i % 2),
            "verifier": "exact",
            "reference": "x = 3, answer 7",
            "model": "toy-policy",
            "sampling": json.dumps({"temperature": 1.0, "n": 4}),
            "spans": spans,
            "error_type": None if i % 2 else "arithmetic",
            "skill": json.dumps({"success_analysis": "s", "mistake_analysis": "m", "golden_workflow": "g"}),
            "annotation": [{"source": "api", "annotator": "api:toy", "request_hash": f"h{i}",
                            "raw_response": '{"spans": []}', "parse_status": "ok", "parse_error": None,
                            "prompt_tokens": 100 + i, "completion_tokens": 20, "cost_usd": 0.0001 * i,
                            "rerun_error": None}],
        })
    return rows


def make_table(n: int, start: int = 0, tag: str = "r") -> pa.Table:
    return pa.Table.from_pylist(make_rows(n, start, tag), schema=ROLLOUT_SCHEMA)


def write_jsonl(path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
