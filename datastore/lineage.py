"""Lineage: who made a version, from what, and how. Stored inside the version's own commit.

A store version's lineage travels in the Lance transaction's properties (key ``spanroute.lineage``,
a JSON object), so it is written by the same atomic manifest commit as the data: a crash can never
leave data without lineage or lineage without data, and no sidecar file can drift.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

LINEAGE_KEY = "spanroute.lineage"
MESSAGE_KEY = "__lance_commit_message"  # Lance's own commit-message property


@dataclass(frozen=True)
class Lineage:
    """How a version came to be. The caller fills the first four; the store fills the rest.

    ``stage``: the pipeline step (import, generate, annotate, ls-pull, skills, ...).
    ``annotator``: who labelled (e.g. ``api:gpt-4o``, ``rule``, a Label Studio user id).
    ``prompt_hash``: hash of the prompt template that produced the annotations.
    ``model``: the model that generated or annotated.
    ``parent_version``: the version the writer read (filled by the store).
    ``rows_written``: rows in this write/update; ``rows_before``: rows in the parent version.
    ``schema_version``: ``datastore.schema.SCHEMA_VERSION`` at write time.
    ``created_at``: UTC ISO-8601 time the commit was prepared.
    ``extra``: free-form JSON-able details (source file, column mapping, run id, ...).
    """

    stage: str = "unknown"
    annotator: str | None = None
    prompt_hash: str | None = None
    model: str | None = None
    parent_version: int | None = None
    rows_written: int | None = None
    rows_before: int | None = None
    schema_version: int | None = None
    operation: str | None = None  # write | update | add_columns (filled by the store)
    message: str = ""
    created_at: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> "Lineage":
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in d.items() if k in known}
        unknown = {k: v for k, v in d.items() if k not in known}
        if unknown:  # written by a newer spanroute: keep it rather than drop it
            kept["extra"] = {**kept.get("extra", {}), **unknown}
        return cls(**kept)


@dataclass(frozen=True)
class VersionInfo:
    """One version of a store as ``Store.versions()`` lists it."""

    version: int
    timestamp: datetime
    message: str
    lineage: dict
    tags: tuple[str, ...]
    rows: int


def lineage_from_properties(props: dict | None) -> dict:
    """The lineage dict stored in a transaction's properties ({} for versions written elsewhere)."""
    if not props or LINEAGE_KEY not in props:
        return {}
    try:
        return json.loads(props[LINEAGE_KEY])
    except json.JSONDecodeError:
        return {"unparsed": props[LINEAGE_KEY]}
