"""Span validation: range, text, labels, the overlap rule and the TRACE cap.

Rules (DESIGN §4), applied to each annotator's spans — a group is one ``(source, annotator)``,
because spans from different annotators are independent opinions and may overlap freely:

1. **Well-formed**: ``0 <= start < end <= len(text)`` in code points, ``text[start:end] == span.text``,
   ``label`` in ``LABELS``, ``source`` in ``SOURCES``.
2. **Overlaps**: spans of the same label that overlap or touch are merged into one (so a group's
   spans are the canonical, minimal description of its labelled characters); a ``key`` span that
   shares a character with an ``error`` span of the same group is refused.
3. **Cap** (TRACE: spans cover at most 25% of the response): each group keeps spans in priority order
   while they fit in ``max_fraction`` of the response, measured in characters or tokens. Priority:
   ``error`` spans before ``key`` spans (an error marks where the rollout went wrong, the signal the
   reverse-KL channel needs most), then earlier spans first (the first error causes the rest; early
   key steps carry the chain to the answer). A span that does not fit in what is left is dropped
   whole — never cut — and later, smaller spans may still fit.

Bad spans raise :class:`SpanError` naming the rollout, the span and the reason; ``validate_row``
and ``validate_batch`` return a :class:`ValidatedRow` per row instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from spans.errors import SpanError
from spans.model import LABELS, SOURCES, Span

_PRIORITY = {"error": 0, "key": 1}


@dataclass(frozen=True, slots=True)
class ValidatedRow:
    """One row of :func:`validate_row` / :func:`validate_batch`: the kept spans, the ones the cap
    dropped, or the error (then both lists are empty)."""

    rollout_id: str | None
    spans: list[Span] = field(default_factory=list)
    dropped: list[Span] = field(default_factory=list)
    error: SpanError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def validate(
    text: str,
    spans: Sequence[Span | dict],
    *,
    max_fraction: float | None = 0.25,
    unit: str = "chars",
    count_tokens: Callable[[str], int] | None = None,
    offset_mapping: Sequence[Sequence[int]] | np.ndarray | None = None,
    rollout_id: str | None = None,
) -> list[Span]:
    """Check, merge and cap ``spans`` of ``text``; return the kept spans sorted by offset.

    Offsets are code points of ``text``. ``unit="chars"`` measures the cap in code points;
    ``unit="tokens"`` in tokens, counted by ``offset_mapping`` (the response's ``[T, 2]`` token
    offsets: a span costs the tokens that overlap it) or by ``count_tokens(str) -> int`` (a span costs
    the tokens of its text). ``max_fraction=None`` turns the cap off. Raises :class:`SpanError`.
    """
    kept, _ = validate_report(
        text, spans, max_fraction=max_fraction, unit=unit, count_tokens=count_tokens,
        offset_mapping=offset_mapping, rollout_id=rollout_id,
    )
    return kept


def validate_report(
    text: str,
    spans: Sequence[Span | dict],
    *,
    max_fraction: float | None = 0.25,
    unit: str = "chars",
    count_tokens: Callable[[str], int] | None = None,
    offset_mapping: Sequence[Sequence[int]] | np.ndarray | None = None,
    rollout_id: str | None = None,
) -> tuple[list[Span], list[Span]]:
    """Like :func:`validate`, but also return the spans the cap dropped: ``(kept, dropped)``."""
    cost = _cost_fn(text, unit, count_tokens, offset_mapping, max_fraction)
    checked = [_check(text, s, rollout_id) for s in spans]
    groups: dict[tuple[str, str], list[Span]] = {}
    for s in checked:
        groups.setdefault((s.source, s.annotator), []).append(s)
    kept: list[Span] = []
    dropped: list[Span] = []
    for group in groups.values():
        merged = _merge_and_check_overlaps(text, group, rollout_id)
        k, d = _cap(merged, cost, max_fraction)
        kept += k
        dropped += d
    order = lambda s: (s.start, s.end, s.label, s.source, s.annotator)  # noqa: E731
    return sorted(kept, key=order), sorted(dropped, key=order)


def validate_row(text: str, spans: Sequence[Span | dict] | None, *, rollout_id: str | None = None,
                 **kwargs) -> ValidatedRow:
    """:func:`validate_report` of one row that never raises: a bad row becomes
    ``ValidatedRow(error=...)``. ``kwargs`` go to :func:`validate_report` (``max_fraction``, ``unit``,
    ``count_tokens``, ``offset_mapping``)."""
    try:
        kept, dropped = validate_report(text, spans or [], rollout_id=rollout_id, **kwargs)
    except SpanError as e:
        return ValidatedRow(rollout_id, error=e)
    return ValidatedRow(rollout_id, kept, dropped)


def validate_batch(
    texts: Sequence[str],
    spans_rows: Sequence[Sequence[Span | dict] | None],
    *,
    rollout_ids: Sequence[str | None] | None = None,
    offset_mappings: Sequence[Sequence[Sequence[int]] | np.ndarray | None] | None = None,
    **kwargs,
) -> list[ValidatedRow]:
    """:func:`validate_row` of many rows; a bad row becomes ``ValidatedRow(error=...)`` instead of
    failing the batch. ``kwargs`` go to :func:`validate` (``max_fraction``, ``unit``, ``count_tokens``).
    """
    if len(texts) != len(spans_rows):
        raise ValueError(f"validate_batch: {len(texts)} texts but {len(spans_rows)} span rows")
    ids = list(rollout_ids) if rollout_ids is not None else [None] * len(texts)
    offs = list(offset_mappings) if offset_mappings is not None else [None] * len(texts)
    return [validate_row(text, row, rollout_id=rid, offset_mapping=om, **kwargs)
            for text, row, rid, om in zip(texts, spans_rows, ids, offs, strict=True)]


def _check(text: str, span: Span | dict, rollout_id: str | None) -> Span:
    """Rule 1 for one span; returns it as a Span."""
    fail = lambda reason: SpanError(reason, span=span, rollout_id=rollout_id)  # noqa: E731
    if isinstance(span, dict):
        missing = [k for k in ("start", "end", "label", "source", "text") if span.get(k) is None]
        if missing:
            raise fail(f"missing field(s) {', '.join(missing)}")
        raw = span
    elif isinstance(span, Span):
        raw = span.to_dict()
    else:
        raise fail(f"expected a Span or a dict, got {type(span).__name__}")
    for k in ("start", "end"):
        v = raw[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise fail(f"{k} must be an integer code-point offset, got {v!r}")
    start, end = int(raw["start"]), int(raw["end"])
    if raw["label"] not in LABELS:
        raise fail(f"label {raw['label']!r} is not one of {LABELS}")
    if raw["source"] not in SOURCES:
        raise fail(f"source {raw['source']!r} is not one of {SOURCES}")
    annotator = raw.get("annotator") or ""
    if not isinstance(annotator, str):
        raise fail(f"annotator must be a string, got {annotator!r}")
    if start >= end:
        raise fail("empty span (start >= end)")
    if start < 0 or end > len(text):
        raise fail(f"out of range: the response has {len(text)} code points")
    if text[start:end] != raw["text"]:
        raise fail(f"text does not match the offsets: response[{start}:{end}] is {text[start:end]!r}")
    return Span(start, end, raw["label"], raw["source"], annotator, raw["text"])


def _merge_and_check_overlaps(text: str, group: list[Span], rollout_id: str | None) -> list[Span]:
    """Rule 2 for one annotator's spans: merge same-label overlaps/touches, refuse key-vs-error."""
    merged: list[Span] = []
    for label in LABELS:
        cur: Span | None = None
        for s in sorted((s for s in group if s.label == label), key=lambda s: (s.start, s.end)):
            if cur is not None and s.start <= cur.end:  # overlapping or touching: one span
                end = max(cur.end, s.end)
                cur = Span(cur.start, end, label, cur.source, cur.annotator, text[cur.start:end])
            else:
                if cur is not None:
                    merged.append(cur)
                cur = s
        if cur is not None:
            merged.append(cur)
    merged.sort(key=lambda s: (s.start, s.end))
    # Same-label spans are now disjoint, so any key/error clash shows up between neighbours.
    for a, b in zip(merged, merged[1:]):
        if b.start < a.end:
            raise SpanError(
                f"a {a.label!r} span and an {b.label!r} span of the same annotator overlap at "
                f"[{b.start}:{min(a.end, b.end)}) (other span [{a.start}:{a.end}))",
                span=b, rollout_id=rollout_id,
            )
    return merged


def _cost_fn(text, unit, count_tokens, offset_mapping, max_fraction):
    """Return ``(total, cost(span))`` in the cap's unit, or None when the cap is off."""
    if max_fraction is None:
        return None
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    if unit == "chars":
        return len(text), lambda s: s.end - s.start
    if unit != "tokens":
        raise ValueError(f"unit must be 'chars' or 'tokens', got {unit!r}")
    if offset_mapping is not None:
        om = np.asarray(offset_mapping, dtype=np.int64).reshape(-1, 2)
        om = om[om[:, 0] < om[:, 1]]  # special tokens (0, 0) are not response text
        return len(om), lambda s: int(np.count_nonzero((om[:, 0] < s.end) & (om[:, 1] > s.start)))
    if count_tokens is not None:
        return count_tokens(text), lambda s: count_tokens(s.text)
    raise ValueError("unit='tokens' needs offset_mapping=[T,2] offsets or count_tokens=fn(str)->int")


def _cap(spans: list[Span], cost, max_fraction) -> tuple[list[Span], list[Span]]:
    """Rule 3: keep spans in priority order while they fit in the budget."""
    if cost is None:
        return spans, []
    total, cost_of = cost
    budget = max_fraction * total
    used = 0
    kept, dropped = [], []
    for s in sorted(spans, key=lambda s: (_PRIORITY[s.label], s.start)):
        c = cost_of(s)
        if used + c <= budget:
            kept.append(s)
            used += c
        else:
            dropped.append(s)
    return kept, dropped
