"""The span model: one definition shared by annotators, Label Studio, the datastore and the trainer.

Offsets are Unicode code points of the response (Python ``str`` indices), end exclusive, and every
span carries its ``text`` so that ``response[start:end] == text`` can be checked on every write.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyarrow as pa

LABELS = ("key", "error")
SOURCES = ("api", "self", "human", "rule")

# The Arrow type of one span; the `spans` column is `pa.list_(SPAN_STRUCT)`.
SPAN_STRUCT = pa.struct(
    [
        pa.field("start", pa.int32(), nullable=False),
        pa.field("end", pa.int32(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("annotator", pa.string()),
        pa.field("text", pa.string(), nullable=False),
    ]
)
SPANS_TYPE = pa.list_(SPAN_STRUCT)


@dataclass(frozen=True, slots=True)
class Span:
    """A labelled character range ``[start, end)`` of a response, in code points."""

    start: int
    end: int
    label: str
    source: str
    annotator: str
    text: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Span":
        return cls(
            start=int(d["start"]),
            end=int(d["end"]),
            label=d["label"],
            source=d["source"],
            annotator=d.get("annotator") or "",
            text=d["text"],
        )


LABEL_CODES = {"key": 1, "error": 2}  # token route codes; 0 = no span (DESIGN §4)
CODE_LABELS = {v: k for k, v in LABEL_CODES.items()}


def as_span(span: "Span | dict") -> "Span":
    """Accept a Span or a dict (an Arrow ``to_pylist`` row) and return a Span."""
    return span if isinstance(span, Span) else Span.from_dict(span)


def spans_to_arrow(rows: "list[list[Span | dict] | None]") -> pa.Array:
    """Rows of spans -> a ``list<SPAN_STRUCT>`` array (the datastore's ``spans`` column); None stays null."""
    py = [None if row is None else [as_span(s).to_dict() for s in row] for row in rows]
    return pa.array(py, type=SPANS_TYPE)


def spans_from_arrow(column: "pa.Array | pa.ChunkedArray") -> "list[list[Span]]":
    """The inverse of :func:`spans_to_arrow`; a null row becomes ``[]``."""
    return [[Span.from_dict(d) for d in (row or [])] for row in column.to_pylist()]
