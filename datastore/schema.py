"""The rollout record schema (DESIGN §2), declared once. Writers never infer a schema.

Bump SCHEMA_VERSION when a column is added, removed or changes type; the store records it in
every version's lineage.
"""

from __future__ import annotations

import pyarrow as pa

from spans.model import SPANS_TYPE

SCHEMA_VERSION = 1

MESSAGE_STRUCT = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

# Evidence of one annotation call: what was asked, what came back, what it cost.
ANNOTATION_STRUCT = pa.struct(
    [
        pa.field("request_hash", pa.string()),
        pa.field("raw_response", pa.string()),
        pa.field("parse_status", pa.string()),  # ok | repaired | failed | skipped
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
        pa.field("annotation", ANNOTATION_STRUCT),
    ],
    metadata={"spanroute.schema_version": str(SCHEMA_VERSION)},
)

REQUIRED_COLUMNS = tuple(f.name for f in ROLLOUT_SCHEMA if not f.nullable)
# Columns holding tokens: annotation writes must never rewrite them.
TOKEN_COLUMNS = ("response_token_ids", "response_logprobs")
ANNOTATION_COLUMNS = ("spans", "error_type", "skill", "annotation")
