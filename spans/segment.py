"""Segmentation into numbered steps that an annotator can point at (TRACE's protocol).

The model sees ``numbered(text)`` and answers with segment numbers; :func:`numbered_steps` are the
steps those numbers point at, and :func:`spans_from_segments` turns numbers back into exact spans.
Segments **tile** the text: each segment's trailing whitespace (line breaks, blank lines) belongs
to it, so concatenating the segments' texts gives the text back exactly, and every offset is a
code point of the text.

Rules: split after each line break; inside a line longer than ``long_line`` code points, also split
between sentences (after ``.``, ``!`` or ``?`` plus whitespace, not after a few common
abbreviations). Never split inside ``$…$`` (one line), ``$$…$$``, ``\\[…\\]``, ``\\(…\\)`` or a
```` ``` ```` code fence; an opener with no closer protects nothing (a truncated rollout must still
segment). Whitespace-only pieces join the segment before them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

from spans.errors import SpanError
from spans.model import Span
from spans.offsets import strip_range


@dataclass(frozen=True, slots=True)
class Segment:
    """A numbered step: ``index`` is the number shown to the annotator (1-based); code-point offsets."""

    index: int
    start: int
    end: int
    text: str


_LINE_BREAK = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(\s+)")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Dr.", "Mr.", "Mrs.", "Ms.", "Fig.", "Eq.", "approx.")
_MATH_CHAR = re.compile(r"[\\$]")
_DOLLAR = re.compile(r"(?<!\\)\$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)


def segment(text: str, *, long_line: int = 200) -> list[Segment]:
    """Split ``text`` into numbered segments that tile it exactly (see the module docstring)."""
    if not text:
        return []
    protected = _protected_regions(text)
    inside = _inside_fn(protected)
    cuts: set[int] = set()
    line_start = 0
    for m in _LINE_BREAK.finditer(text):
        if not inside(m.end()):
            cuts.add(m.end())
        _sentence_cuts(text, line_start, m.start(), long_line, inside, cuts)
        line_start = m.end()
    _sentence_cuts(text, line_start, len(text), long_line, inside, cuts)

    bounds = [0] + sorted(c for c in cuts if 0 < c < len(text)) + [len(text)]
    pieces: list[tuple[int, int]] = []
    for a, b in zip(bounds, bounds[1:]):
        if pieces and not text[a:b].strip():  # whitespace-only: trailing whitespace of the previous
            pieces[-1] = (pieces[-1][0], b)
        else:
            pieces.append((a, b))
    # Leading whitespace-only piece (text starting with blank lines) joins the first real segment.
    if len(pieces) > 1 and not text[pieces[0][0]:pieces[0][1]].strip():
        pieces[1] = (pieces[0][0], pieces[1][1])
        pieces.pop(0)
    return [Segment(i + 1, a, b, text[a:b]) for i, (a, b) in enumerate(pieces)]


def numbered_steps(text: str, *, long_line: int = 200) -> list[Segment]:
    """The steps an annotator sees and points at: each segment without its surrounding white space
    (``step.text == text[step.start:step.end]``, code points), keeping its number. Steps do not tile
    the text; a white-space-only text has none."""
    out = []
    for s in segment(text, long_line=long_line):
        a, b = strip_range(text, s.start, s.end)
        if a < b:
            out.append(Segment(s.index, a, b, text[a:b]))
    return out


def numbered(text: str, *, long_line: int = 200) -> str:
    """Render ``text`` as ``[1] first step`` lines, the form an annotator prompt shows.

    One line per :func:`numbered_steps` step (no surrounding white space); a step spanning several
    lines (display math, a code fence) keeps its inner line breaks, shown as ``\n`` (CRLF/CR
    included: this is a display, spans come back through the numbers).
    """
    def show(s: str) -> str:
        return s.replace("\r\n", "\n").replace("\r", "\n")

    return "\n".join(f"[{s.index}] {show(s.text)}" for s in numbered_steps(text, long_line=long_line))


def spans_from_segments(
    text: str,
    indices: Iterable[int],
    label: str,
    source: str,
    annotator: str,
    *,
    long_line: int = 200,
) -> list[Span]:
    """Spans for the segment numbers an annotator chose: exact offsets into ``text``.

    Consecutive numbers make one span; each span runs from its first segment's first non-space
    character to its last segment's last non-space character. Unknown numbers raise ``SpanError``.
    """
    segs = segment(text, long_line=long_line)
    chosen = sorted(set(int(i) for i in indices))
    bad = [i for i in chosen if not 1 <= i <= len(segs)]
    if bad:
        raise SpanError(f"segment number(s) {bad} not in 1..{len(segs)}")
    runs: list[list[int]] = []
    for i in chosen:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    out = []
    for run in runs:
        a2, b2 = strip_range(text, segs[run[0] - 1].start, segs[run[-1] - 1].end)
        if a2 < b2:  # a whitespace-only text has nothing to mark
            out.append(Span(a2, b2, label, source, annotator, text[a2:b2]))
    return out


def _protected_regions(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` regions that must not be split: code fences, then math outside them."""
    regions: list[tuple[int, int]] = []
    fences = list(_FENCE.finditer(text))
    i = 0
    while i + 1 < len(fences):  # pair fences in order; an unpaired last one protects nothing
        open_, close = fences[i], fences[i + 1]
        line_end = text.find("\n", close.end())
        regions.append((open_.start(), len(text) if line_end < 0 else line_end))
        i += 2
    fence_regions = list(regions)
    fk = 0  # next fence region not yet passed
    pos = 0
    n = len(text)
    while True:
        m = _MATH_CHAR.search(text, pos)
        if m is None:
            break
        pos = m.start()
        while fk < len(fence_regions) and fence_regions[fk][1] <= pos:
            fk += 1
        if fk < len(fence_regions) and fence_regions[fk][0] <= pos:
            pos = fence_regions[fk][1]  # no math inside code
            continue
        if text[pos] == "\\":
            if pos + 1 < n and text[pos + 1] in "[(":
                closer = "\\]" if text[pos + 1] == "[" else "\\)"
                end = text.find(closer, pos + 2)
                if end >= 0:
                    regions.append((pos, end + 2))
                    pos = end + 2
                    continue
            pos += 2  # an escaped character (\$ is a dollar sign, not math)
        elif text.startswith("$$", pos):
            end = text.find("$$", pos + 2)
            if end >= 0:
                regions.append((pos, end + 2))
                pos = end + 2
                continue
            pos += 2
        else:
            close = _DOLLAR.search(text, pos + 1)
            brk = _LINE_BREAK.search(text, pos + 1)
            if close and (brk is None or close.start() < brk.start()):
                regions.append((pos, close.end()))
                pos = close.end()
                continue
            pos += 1
    return sorted(regions)


def _inside_fn(regions: list[tuple[int, int]]):
    """``inside(pos)``: is a cut at ``pos`` strictly inside a protected region? (Regions are disjoint.)"""
    starts = [r[0] for r in regions]

    def inside(pos: int) -> bool:
        k = bisect.bisect_left(starts, pos) - 1  # the last region starting before pos
        return k >= 0 and regions[k][1] > pos

    return inside


def _sentence_cuts(text, start, end, long_line, inside, cuts: set[int]) -> None:
    """Add sentence boundaries in ``text[start:end]`` when that line is long."""
    if end - start <= long_line:
        return
    for m in _SENTENCE_END.finditer(text, start, end):
        cut = m.end()  # after the whitespace: it trails the sentence before
        if cut >= end or inside(cut) or inside(m.start()):
            continue
        before = text[max(start, m.start() - 8):m.start() + 1]
        if any(before.endswith(a) for a in _ABBREVIATIONS):
            continue
        cuts.add(cut)
