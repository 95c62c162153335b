"""OpenAI Batch API files: export the requests a job still needs, import the results into the cache.

The round trip composes with the request cache: `export_batch` writes one JSONL line per request
not yet answered (``custom_id`` = the request hash), you submit it with the Batch API (half price,
24 h), and `import_batch` stores each answered line as a ``done`` cache entry, so rerunning the
same `annotate api` command serves every row from the cache and writes the version at no cost.
"""

from __future__ import annotations

import json
from pathlib import Path

from annotate.engine import request_key
from annotate.journal import CallRecord, Journal, canonical
from annotate.pricing import Price
from annotate.secrets import redact


def export_batch(bodies: list[dict], cache_path: Path, out: Path) -> int:
    """Write the not-yet-answered requests as Batch API JSONL; returns how many lines."""
    keyed = {request_key(canonical(b)): b for b in bodies}
    journal = Journal(cache_path)
    try:
        done = journal.lookup(list(keyed))
    finally:
        journal.close()
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for key, body in keyed.items():
            if key not in done:
                f.write(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                                    "body": body}, ensure_ascii=False) + "\n")
                n += 1
    return n


def import_batch(results: Path, cache_path: Path, price: Price) -> tuple[int, int]:
    """Store a Batch API output JSONL in the cache: (answers stored, lines that carried an error)."""
    journal = Journal(cache_path)
    stored = errors = 0
    try:
        with open(results, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    key = item["custom_id"]
                    resp = item.get("response") or {}
                except (ValueError, KeyError) as e:
                    raise ValueError(f"{results}: line {i} is not a Batch API result ({e})") from None
                if item.get("error") or resp.get("status_code") != 200:
                    errors += 1
                    continue
                body = resp["body"]
                text = json.dumps(body, ensure_ascii=False)
                usage = body.get("usage") or {}
                pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                content = body["choices"][0]["message"].get("content")
                journal.mark_inflight([(key, "")])
                journal.record(CallRecord(key, "done", redact(content or ""), redact(text), pt, ct,
                                          price.cost(pt, ct) * 0.5, None, 1))  # Batch API: half price
                stored += 1
        journal.flush()
    finally:
        journal.close()
    return stored, errors
