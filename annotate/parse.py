"""Model answers -> exact spans: a tolerant JSON parser and the segment/quote mapping.

Integers from a model are never trusted alone. A step's span is its quote located inside the
segment it names (the tight span the model pointed at); a quote found only elsewhere wins over the
number (the model miscounted); a quote found nowhere falls back to the whole named segment; a
number out of range is repaired from its quote, or the step is dropped; every repair is noted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from annotate.templates import ERROR_TYPES
from annotate.spans_adapter import Seg, locate, segments
from spans.model import Span

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def parse_json(content: str | None) -> tuple[dict | None, str, str | None]:
    """(object, status, error): status ``ok`` for strict JSON, ``repaired`` when a fence, prose
    around the object or trailing commas had to be removed, ``failed`` with the reason otherwise."""
    if content is None or not content.strip():
        return None, "failed", "empty answer"
    try:
        obj = json.loads(content)
        if isinstance(obj, dict):
            return obj, "ok", None
        return None, "failed", f"answer is JSON {type(obj).__name__}, not an object"
    except json.JSONDecodeError as e:
        first_error = f"invalid JSON: {e}"
    candidates = [m.group(1) for m in _FENCE.finditer(content)]
    a, b = content.find("{"), content.rfind("}")
    if 0 <= a < b:
        candidates.append(content[a : b + 1])
    for c in candidates:
        for text in (c, _TRAILING_COMMA.sub(r"\1", c)):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj, "repaired", None
    return None, "failed", first_error


@dataclass(frozen=True)
class Mapped:
    """The spans of one answer, the error type, and what had to be repaired or dropped."""

    spans: list[Span]
    error_type: str | None
    status: str  # ok | repaired | failed
    notes: list[str]


def map_answer(obj: dict, response: str, label: str, source: str, annotator: str,
               segs: list[Seg] | None = None) -> Mapped:
    """Turn a parsed answer ``{"steps": [{segment, quote, reason}], "error_type"?}`` into spans."""
    segs = segments(response) if segs is None else segs
    notes: list[str] = []
    steps = obj.get("steps")
    if not isinstance(steps, list):
        return Mapped([], None, "failed", ["answer has no 'steps' list"])
    ranges: set[tuple[int, int]] = set()
    for k, step in enumerate(steps):
        if not isinstance(step, dict):
            notes.append(f"step {k}: not an object")
            continue
        n, quote = step.get("segment"), step.get("quote") or ""
        seg = segs[n - 1] if isinstance(n, int) and 1 <= n <= len(segs) else None
        if seg is None:
            where = locate(response, quote) if isinstance(quote, str) and quote.strip() else None
            if where is None:
                notes.append(f"step {k}: segment {n!r} outside 1..{len(segs)} and no quote found")
                continue
            notes.append(f"step {k}: segment {n!r} outside 1..{len(segs)}; placed by its quote")
            ranges.add(where)
            continue
        if isinstance(quote, str) and quote.strip():
            # The quote inside its own segment is the tight span. Repeated inside the segment
            # ("0 * 6 = 0"), the occurrence nearest the segment's end wins: a step states its
            # result last, and results are what annotators point at.
            inner = locate(seg.text, quote, near=len(seg.text))
            if inner is not None:
                ranges.add((seg.start + inner[0], seg.start + inner[1]))
                continue
            where = locate(response, quote, near=(seg.start, seg.end))
            if where is None:
                notes.append(f"step {k}: quote not found; marked all of segment {n}")
            else:
                notes.append(f"step {k}: quote is not in segment {n}; placed by its quote")
                ranges.add(where)
                continue
        ranges.add((seg.start, seg.end))
    spans = [Span(a, b, label, source, annotator, response[a:b]) for a, b in sorted(ranges) if b > a]
    error_type = obj.get("error_type")
    if label == "error":
        if error_type not in ERROR_TYPES:
            notes.append(f"error_type {error_type!r} not in the fixed list; set to 'other'")
            error_type = "other"
    else:
        error_type = None
    if steps and not spans:
        return Mapped([], error_type, "failed", notes)
    return Mapped(spans, error_type, "repaired" if notes else "ok", notes)

