"""Combine one annotator's new spans with everyone else's on a row (CONTRACTS: spans convention)."""

from __future__ import annotations

from collections.abc import Sequence

from spans.model import Span, as_span


def merge_spans(
    existing: Sequence[Span | dict] | None,
    new: Sequence[Span | dict],
    source: str,
    annotator: str,
) -> list[Span]:
    """Replace the spans of ``(source, annotator)`` on a row by ``new``; keep all other spans.

    Every new span must carry that same source and annotator (a mismatch is a caller bug and
    raises ``ValueError``). Writing an empty ``new`` removes that annotator's spans. The result is
    sorted by ``(start, end, label, source, annotator)`` so equal sets compare equal.
    """
    annotator = annotator or ""
    fresh = [as_span(s) for s in new]
    for s in fresh:
        if (s.source, s.annotator) != (source, annotator):
            raise ValueError(
                f"merge_spans: span [{s.start}:{s.end}) is by {s.source}/{s.annotator}, "
                f"not {source}/{annotator}"
            )
    kept = [s for s in map(as_span, existing or ()) if (s.source, s.annotator) != (source, annotator)]
    return sorted(kept + fresh, key=lambda s: (s.start, s.end, s.label, s.source, s.annotator))


def select_spans(
    spans: Sequence[Span | dict] | None, *, source: str | None = None, annotator: str | None = None
) -> list[Span]:
    """The spans of one source and/or annotator (``None`` matches any) — e.g. what training routes on."""
    return [s for s in map(as_span, spans or ())
            if (source is None or s.source == source) and (annotator is None or s.annotator == annotator)]
