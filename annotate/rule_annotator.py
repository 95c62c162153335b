"""`annotate rule`: the toy world's exact checker (`rule.py`) behind the `Annotator` protocol."""

from __future__ import annotations

from annotate.protocol import Provenance, RowResult
from annotate.rule import ANNOTATOR, rule_annotate


class RuleAnnotator:
    """Free and exact on toy arithmetic rollouts; rows with no verifier result are skipped."""

    provenance = Provenance(source="rule", annotator=ANNOTATOR, model=None, prompt_hash=None,
                            extra={"rule": "first wrong step / steps carrying the answer"})

    def annotate(self, records: list[dict]) -> list[RowResult]:
        out = []
        for r in records:
            if r.get("correct") is None:
                out.append(RowResult(r["rollout_id"], [], None, "skipped", "no verifier result (`correct` is null)"))
                continue
            spans, etype = rule_annotate(r["response"], r.get("reference"), bool(r["correct"]))
            out.append(RowResult(r["rollout_id"], spans, etype, "ok" if spans else "failed",
                                 None if spans else "no step or answer line found"))
        return out
