"""The view of `spans/` that annotation uses: trimmed numbered steps, quote location, merge, checks.

`spans.segment` tiles the text (each segment keeps its trailing line break); an annotator points at
a step, so the steps shown and mapped here are those segments without surrounding whitespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from spans import SpanError, locate, merge_spans, segment, validate_report
from spans.model import Span

__all__ = ["Seg", "locate", "merge_spans", "render_numbered", "segments", "validate_spans"]


@dataclass(frozen=True, slots=True)
class Seg:
    """One numbered step: ``text == response[start:end]`` (code points), no outer whitespace."""

    number: int  # 1-based, as the model sees it
    start: int
    end: int
    text: str


def segments(text: str) -> list[Seg]:
    out = []
    for s in segment(text):
        a, b = s.start, s.end
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append(Seg(len(out) + 1, a, b, text[a:b]))
    return out


def render_numbered(segs: list[Seg]) -> str:
    """What the model sees: one ``[n] step`` per line."""
    return "\n".join(f"[{s.number}] {s.text}" for s in segs)


def validate_spans(text: str, spans: list[Span], rollout_id: str | None = None,
                   max_fraction: float | None = 0.25) -> tuple[list[Span], list[Span], str | None]:
    """(kept, dropped by TRACE's cap, None), or ([], [], reason) when `spans.validate` refuses them."""
    try:
        kept, dropped = validate_report(text, spans, max_fraction=max_fraction, rollout_id=rollout_id)
    except SpanError as e:
        return [], [], str(e)
    return list(kept), list(dropped), None
