"""The few `spans/` functions annotation needs, behind one import.

`spans/` (issue #3) owns segmentation, quote location and merging; until it lands in this branch
the thin fallbacks below implement the same contracts (CONTRACTS.md) so annotation can be built
and tested. Once `spans` exports them, its versions win automatically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spans.model import Span

try:  # the real implementations, when `spans/` has landed
    from spans import segment as _segment  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on merge order
    _segment = None
try:
    from spans import locate as _locate  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _locate = None
try:
    from spans import merge_spans as _merge_spans  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _merge_spans = None


@dataclass(frozen=True, slots=True)
class Seg:
    """One numbered step of a response: ``text == response[start:end]`` (code points)."""

    number: int  # 1-based, as the model sees it
    start: int
    end: int
    text: str


_LINE = re.compile(r"[^\n]+")


def segments(text: str) -> list[Seg]:
    """Numbered steps of `text` (1-based), from `spans.segment` when available, else one per line."""
    if _segment is not None:  # segments tile the text; annotators point at the trimmed step
        out = []
        for s in _segment(text):
            a, b = s.start, s.end
            while a < b and text[a].isspace():
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            if a < b:
                out.append(Seg(len(out) + 1, a, b, text[a:b]))
        return out
    out = []
    for m in _LINE.finditer(text):
        a, b = m.start(), m.end()
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


def locate(text: str, quote: str, near=None) -> tuple[int, int] | None:
    """Code-point range of `quote` in `text` (exact, then whitespace-normalised), or None."""
    if _locate is not None:
        return _locate(text, quote, near=near)
    quote = quote.strip()
    if not quote:
        return None
    hits = [m.start() for m in re.finditer(re.escape(quote), text)]
    if hits:
        if len(hits) > 1 and near is None:
            return None  # ambiguous
        c = near if isinstance(near, int) else (near[0] if near is not None else 0)
        best = min(hits, key=lambda h: abs(h - c))
        return best, best + len(quote)
    pattern = r"\s+".join(re.escape(w) for w in quote.split())
    m = re.search(pattern, text)
    return (m.start(), m.end()) if m else None


def merge_spans(existing: list[Span], new: list[Span], source: str, annotator: str) -> list[Span]:
    """Replace the spans of (source, annotator) on a row, keep everyone else's."""
    if _merge_spans is not None:
        return list(_merge_spans(existing, new, source, annotator))
    kept = [s for s in existing if not (s.source == source and s.annotator == annotator)]
    return sorted(kept + list(new), key=lambda s: (s.start, s.end, s.label, s.source, s.annotator))


try:
    from spans import validate as _validate  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _validate = None


def validate_spans(text: str, spans: list[Span]) -> tuple[list[Span], str | None]:
    """(spans as validated/capped by `spans.validate`, None) or ([], the reason they were refused)."""
    if _validate is not None:
        try:
            out = _validate(text, spans)
        except ValueError as e:  # SpanError is a ValueError
            return [], str(e)
        return (list(out) if out is not None else list(spans)), None
    for s in spans:
        if not (0 <= s.start < s.end <= len(text)) or text[s.start:s.end] != s.text:
            return [], f"span [{s.start}, {s.end}) does not match the response text"
    return list(spans), None
