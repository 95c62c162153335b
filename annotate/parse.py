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
from spans import Segment, Span, locate, numbered_steps

_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_FENCE = re.compile(r"```[\w-]*")
# Reasoning models think out loud inside these tags; what is inside is a draft, never the answer.
_REASONING = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_OPEN_REASONING = re.compile(r"<(think|thinking|reasoning)>", re.I)
_DECODER = json.JSONDecoder()
_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool}


def fits(obj, schema: dict | None) -> bool:
    """Does `obj` have the schema's shape: an object holding every `required` key, each top-level
    property of its declared JSON type? (Bounds such as maxItems are not checked here: a longer
    answer is still the answer.)"""
    if not isinstance(obj, dict):
        return False
    if not schema:
        return True
    props = schema.get("properties") or {}
    for name in schema.get("required") or ():
        want = _TYPES.get((props.get(name) or {}).get("type"), object)
        if name not in obj or not isinstance(obj[name], want) or (want is int and isinstance(obj[name], bool)):
            return False
    return True


def _objects(text: str) -> list[tuple[dict, int, int]]:
    """Every complete top-level JSON object in `text`, in order, with its [start, end) offsets in
    code points (braces in prose are skipped)."""
    out, i = [], text.find("{")
    while i >= 0:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            out.append((obj, i, end))
        i = text.find("{", end)
    return out


def parse_json(content: str | None, schema: dict | None = None) -> tuple[dict | None, str, str | None]:
    """(object, status, note) of a model's answer.

    ``ok`` (note None): the answer is one JSON object fitting `schema` (when given), alone or after
    closed reasoning blocks (``<think>…</think>``, ``<thinking>``, ``<reasoning>``): what a reasoning
    model writes, and what a vLLM server's ``--reasoning-parser`` would have moved out of
    ``content``. ``repaired``: the object was found around other text — a code fence, prose or
    another object before or after it, trailing commas — and it is the **last** complete top-level
    object that fits `schema` (`fits`; drafts inside reasoning never count); the note says what was
    around it (e.g. ``JSON taken from a longer answer: 7 characters before it, a code fence around
    it``). ``failed`` with the reason otherwise (the first JSON error, or which objects were found
    and why none fits).
    """
    if content is None or not content.strip():
        return None, "failed", "empty answer"
    obj, first_error = _alone(content, schema)
    if obj is not None:
        return obj, "ok", None
    answer = _REASONING.sub(" ", content)
    opened = _OPEN_REASONING.search(answer)
    if opened:  # reasoning never closed: everything after the tag is thought, not an answer
        answer = answer[: opened.start()]
        if not answer.strip():
            return None, "failed", f"answer ended inside <{opened.group(1)}> (no JSON after the reasoning)"
    elif answer != content and (obj := _alone(answer, schema)[0]) is not None:
        return obj, "ok", None  # closed reasoning, then nothing but the answer: as a reasoning parser gives it
    for text, commas in ((answer, False), (_TRAILING_COMMA.sub(r"\1", answer), True)):
        found = _objects(text)
        good = [f for f in found if fits(f[0], schema)]
        if good:
            return good[-1][0], "repaired", _repair_note(text, good, commas)
    if found:
        return None, "failed", f"{len(found)} JSON object(s) found, none fits the schema: {_why_not(found[-1][0], schema)}"
    return None, "failed", first_error


def _alone(text: str, schema: dict | None) -> tuple[dict | None, str | None]:
    """(the object, None) when the whole of `text` is one JSON object that fits `schema`, else
    (None, why not)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e}"
    return (obj, None) if fits(obj, schema) else (None, _why_not(obj, schema))


def _repair_note(text: str, good: list[tuple[dict, int, int]], commas: bool) -> str:
    """What surrounded the object `parse_json` took (the last of `good`) in `text`."""
    _, start, end = good[-1]
    before, after = _FENCE.sub("", text[:start]).strip(), _FENCE.sub("", text[end:]).strip()
    parts = [f"the last of {len(good)} objects that fit the schema"] if len(good) > 1 else []
    parts += [f"{len(before)} characters before it"] if before else []
    parts += [f"{len(after)} characters after it"] if after else []
    parts += ["a code fence around it"] if _FENCE.search(text[:start] + text[end:]) else []
    parts += ["trailing commas removed"] if commas else []
    return "JSON taken from a longer answer: " + ", ".join(parts or ["text around it"])


def _why_not(obj, schema: dict | None) -> str:
    if not isinstance(obj, dict):
        return f"answer is JSON {type(obj).__name__}, not an object"
    missing = [k for k in (schema or {}).get("required") or () if k not in obj]
    if missing:
        return f"object lacks {', '.join(map(repr, missing))}"
    return "a required field has the wrong type"


@dataclass(frozen=True)
class Mapped:
    """The spans of one answer, the error type, and what had to be repaired or dropped."""

    spans: list[Span]
    error_type: str | None
    status: str  # ok | repaired | failed
    notes: list[str]


def map_answer(obj: dict, response: str, label: str, source: str, annotator: str,
               segs: list[Segment] | None = None) -> Mapped:
    """Turn a parsed answer ``{"steps": [{segment, quote, reason}], "error_type"?}`` into spans."""
    segs = numbered_steps(response) if segs is None else segs
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

