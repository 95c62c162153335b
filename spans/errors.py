"""The one error type for bad spans."""

from __future__ import annotations


class SpanError(ValueError):
    """A span that cannot be accepted, with the rollout, the span and the reason named.

    Attributes are kept so a batch API can report them per row without parsing the message.
    """

    def __init__(self, reason: str, *, span: object = None, rollout_id: str | None = None):
        self.reason = reason
        self.span = span
        self.rollout_id = rollout_id
        super().__init__(f"rollout {rollout_id or '?'}: span {_describe(span)}: {reason}")


def _describe(span: object) -> str:
    if span is None:
        return "-"
    get = span.get if isinstance(span, dict) else lambda k, d=None: getattr(span, k, d)
    start, end, label = get("start"), get("end"), get("label")
    who = f"{get('source')}/{get('annotator') or ''}"
    text = get("text")
    preview = "" if text is None else f" {text[:40]!r}{'…' if len(text) > 40 else ''}"
    return f"[{start}:{end}) {label!r} by {who}{preview}"
