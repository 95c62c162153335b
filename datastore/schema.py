"""The rollout record schema (DESIGN §2), declared once. Writers never infer a schema.

Bump SCHEMA_VERSION when a column is added, removed or changes type; the store records it in
every version's lineage.
"""

from __future__ import annotations

import pyarrow as pa

from spans.model import SPANS_TYPE

# 2: `annotation` became a list with one evidence entry per (source, annotator) (was one struct per
#    row, which each job overwrote); `datastore.migrate.migrate_evidence` converts a v1 store.
SCHEMA_VERSION = 2

MESSAGE_STRUCT = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

# Evidence of one annotator's call about one rollout: what was asked, what came back, what it cost.
EVIDENCE_STRUCT = pa.struct(
    [
        pa.field("source", pa.string()),  # api | self | human | rule (null: migrated, origin unknown)
        pa.field("annotator", pa.string()),  # e.g. api:gpt-4o-mini, rule-toy-v1
        pa.field("request_hash", pa.string()),
        pa.field("raw_response", pa.string()),
        pa.field("parse_status", pa.string()),  # ok | repaired | failed | truncated | skipped
        pa.field("parse_error", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        # a later run of the same annotator that failed while this entry's good spans were kept
        pa.field("rerun_error", pa.string()),
    ]
)
ANNOTATION_TYPE = pa.list_(EVIDENCE_STRUCT)

# Schema version 1's `annotation`: one struct per row, the last job's evidence (read by migrations
# and by readers of old versions; never written).
ANNOTATION_STRUCT_V1 = pa.struct(
    [
        pa.field("request_hash", pa.string()),
        pa.field("raw_response", pa.string()),
        pa.field("parse_status", pa.string()),
        pa.field("parse_error", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
    ]
)

ROLLOUT_SCHEMA = pa.schema(
    [
        pa.field("rollout_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE_STRUCT)),
        pa.field("response", pa.string(), nullable=False),
        pa.field("response_token_ids", pa.list_(pa.int32())),
        pa.field("response_logprobs", pa.list_(pa.float32())),
        pa.field("reward", pa.float32()),
        pa.field("correct", pa.bool_()),
        pa.field("verifier", pa.string()),
        pa.field("reference", pa.string()),
        pa.field("model", pa.string()),
        pa.field("sampling", pa.string()),  # JSON
        pa.field("spans", SPANS_TYPE),
        pa.field("error_type", pa.string()),
        pa.field("skill", pa.string()),  # JSON {success_analysis, mistake_analysis, golden_workflow}
        pa.field("annotation", ANNOTATION_TYPE),  # one entry per (source, annotator)
    ],
    metadata={"spanroute.schema_version": str(SCHEMA_VERSION)},
)

REQUIRED_COLUMNS = tuple(f.name for f in ROLLOUT_SCHEMA if not f.nullable)
# Columns holding tokens: annotation writes must never rewrite them.
TOKEN_COLUMNS = ("response_token_ids", "response_logprobs")
ANNOTATION_COLUMNS = ("spans", "error_type", "skill", "annotation")


def evidence_entries(value) -> list[dict]:
    """The evidence entries of one row's `annotation` cell, whichever schema version wrote it: a
    list (v2) as is, a v1 struct as one entry of unknown origin (source/annotator None), null as []."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [{"source": None, "annotator": None, "rerun_error": None, **value}]
    return list(value)


def evidence_for(value, source: str, annotator: str) -> dict | None:
    """This annotator's own evidence entry in a row's `annotation` cell, or None. A v1 cell (one
    struct, origin unknown) answers for every annotator, as v1 readers treated it."""
    entries = evidence_entries(value)
    for who in ((source, annotator), (None, None)):  # its own first; else evidence of unknown origin
        for e in entries:
            if (e.get("source"), e.get("annotator")) == who:
                return e
    return None
