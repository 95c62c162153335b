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
