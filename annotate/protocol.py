"""The one annotator interface and the result record every annotator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from spans.model import Span


@dataclass(frozen=True)
class RowResult:
    """What one annotator says about one rollout, with its evidence (DESIGN §2 `annotation`).

    `spans` are this annotator's spans only (the job merges them with other annotators' spans).
    `status` is the annotation's ``parse_status``: ok | repaired | failed | truncated (the answer
    was cut at max_tokens) | skipped; a row that is not ok/repaired keeps whatever spans and
    error_type it had.
    """

    rollout_id: str
    spans: list[Span]
    error_type: str | None
    status: str
    error: str | None = None
    request_hash: str | None = None
    raw_response: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    skill: str | None = None

    def evidence(self) -> dict:
        """This result's fields of an evidence entry (`datastore.schema.EVIDENCE_STRUCT`; the job
        adds ``source``/``annotator`` and keeps one entry per annotator)."""
        return {
            "request_hash": self.request_hash,
            "raw_response": self.raw_response,
            "parse_status": self.status,
            "parse_error": self.error,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


@dataclass(frozen=True)
class Provenance:
    """Who annotated, recorded in spans (`source`, `annotator`) and in the version's lineage."""

    source: str  # api | self | human | rule
    annotator: str  # e.g. "api:gpt-4o-mini", "self:ckpt-0040", "rule-toy-v1"
    model: str | None = None
    prompt_hash: str | None = None
    extra: dict = field(default_factory=dict)


class Annotator(Protocol):
    """Annotates rollouts: records are dicts with at least rollout_id, prompt, response, correct,
    reference. Returns one `RowResult` per record, in order; never raises for a bad row."""

    provenance: Provenance

    def annotate(self, records: list[dict]) -> list[RowResult]: ...
