"""Rule-based Skill-SD skills of the toy world: success rate, the rule checker's error types and a
golden workflow derived from the reference steps, per prompt group (`skills extract --engine rule`)."""

from __future__ import annotations

from collections import Counter

from annotate.protocol import Provenance, RowResult
from annotate.skills import groups_of, skill_json, unit_of
from train.toy.rule import STEP, rule_annotate

_OPS = {"+": "add", "-": "subtract", "*": "multiply", "×": "multiply", "x": "multiply", "/": "divide", "÷": "divide"}


def toy_workflow(reference: str | None) -> str:
    """Numbered steps from the reference solution, naming operations, never the final answer."""
    steps = list(STEP.finditer(reference or ""))
    if not steps:
        return "1. Write each intermediate computation on its own line. 2. Recompute each line. 3. End with 'Answer: N'."
    lines, prev = [], None
    for k, m in enumerate(steps, 1):
        a, op, b = m.group(1), m.group(2), m.group(3)
        left = "the previous result" if prev is not None and a == prev else a
        right = "the previous result" if prev is not None and b == prev and left != "the previous result" else b
        lines.append(f"{k}. {_OPS.get(op, op)} {left} and {right}")
        prev = m.group(4)
    lines.append(f"{len(steps) + 1}. recompute every line, then state the last result as 'Answer: N'")
    return " ".join(lines)


def rule_skill(group: list[dict]) -> str:
    """The toy world's skill for one prompt group, from the rule checker's verdicts."""
    n, ok = len(group), sum(1 for r in group if r.get("correct"))
    kinds = Counter()
    for r in group:
        if r.get("correct") is False:
            _, et = rule_annotate(r["response"], r.get("reference"), False)
            kinds[et or "other"] += 1
    success = (f"{ok} of {n} attempts were correct: they did the operations in the problem's order, one "
               "per line, and repeated the last result on the Answer line." if ok else
               f"none of {n} attempts was correct.")
    mistakes = ("; ".join(f"{c} attempt(s): {k.replace('_', ' ')} error" for k, c in kinds.most_common())
                if kinds else "no mistakes in this group.")
    return skill_json(success, mistakes, toy_workflow(group[0].get("reference")))


class RuleSkills:
    def __init__(self, per: str = "group"):
        self.per = per
        self.provenance = Provenance(source="rule", annotator="rule-skill-toy-v1", extra={"unit": per})

    def annotate(self, records: list[dict]) -> list[RowResult]:
        skill = {g: rule_skill(rows) for g, rows in groups_of(records, self.per).items()}
        return [RowResult(r["rollout_id"], [], None, "ok", skill=skill[unit_of(r, self.per)]) for r in records]
