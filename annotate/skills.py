"""Skill-SD skill summaries: ``{success_analysis, mistake_analysis, golden_workflow}`` per prompt group,
and a per-prompt skill bank with UCB selection of the skill the teacher sees.

Extraction runs per prompt group (all G rollouts of one prompt), through the same engine as span
annotation (`api`/`self`) or rule-based for the toy world, and writes the group's skill JSON into
the `skill` column of every row of the group. The toy world's rule-based skills live in
`train.toy.skills`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from annotate.api import ApiAnnotator, build_body, not_sent_reason, public_url, read_answer
from annotate.engine import request_key, run_calls
from annotate.journal import canonical
from annotate.templates import load
from annotate.protocol import Provenance, RowResult

SKILL_KEYS = ("success_analysis", "mistake_analysis", "golden_workflow")


def unit_of(r: dict, per: str) -> str:
    """The extraction unit of a row: its prompt group (`group_id`, else `prompt_id`) or itself."""
    if per == "rollout":
        return r["rollout_id"]
    return r.get("group_id") or r.get("prompt_id") or r["rollout_id"]


def groups_of(records: list[dict], per: str = "group") -> dict[str, list[dict]]:
    """Rows by extraction unit, in first-seen order."""
    if per not in ("group", "rollout"):
        raise ValueError(f"per must be 'group' or 'rollout', not {per!r}")
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        out[unit_of(r, per)].append(r)
    return dict(out)


def skill_json(success: str, mistakes: str, workflow: str) -> str:
    return json.dumps({"success_analysis": success, "mistake_analysis": mistakes, "golden_workflow": workflow},
                      ensure_ascii=False)


# --- through the engine (api / self) ----------------------------------------------------------
@dataclass
class ApiSkills:
    """Skill summaries per prompt group through an OpenAI-compatible endpoint."""

    api: ApiAnnotator  # reuses its engine config, model, params and provenance naming
    per: str = "group"  # group: one skill per prompt group | rollout: one per rollout
    max_attempts_shown: int = 8
    max_chars: int = 2000

    def __post_init__(self) -> None:
        self.tpl = load("skill_summary", self.api.prompt_dir)
        a = self.api
        self.provenance = Provenance(a.source, a.provenance.annotator, a.model, self.tpl.sha256[:16],
                                     extra={"prompt_hashes": {"skill_summary": self.tpl.sha256},
                                            "base_url": public_url(a.engine.base_url), "unit": self.per})

    def body_for(self, group: list[dict]) -> dict:
        shown = group[: self.max_attempts_shown]
        attempts = "\n\n".join(
            f"Attempt {k} ({'correct' if r.get('correct') else 'incorrect'}):\n{r['response'][: self.max_chars]}"
            for k, r in enumerate(shown, 1))
        return build_body(self.tpl, self.api.model, self.api.params, prompt=group[0].get("prompt") or "",
                          reference=group[0].get("reference") or "(none)", attempts=attempts)

    def annotate(self, records: list[dict]) -> list[RowResult]:
        groups = groups_of(records, self.per)
        bodies = {g: self.body_for(rows) for g, rows in groups.items()}
        calls, self.summary = run_calls(list(bodies.values()), self.api.engine)
        per_group: dict[str, RowResult] = {}
        for g, body in bodies.items():
            key = request_key(canonical(body))
            call = calls.get(key)
            if call is None:
                per_group[g] = RowResult("", [], None, "skipped", not_sent_reason(self.summary), request_hash=key)
                continue
            ev = dict(request_hash=key, raw_response=call.response, prompt_tokens=call.prompt_tokens,
                      completion_tokens=call.completion_tokens, cost_usd=call.cost_usd)
            obj, status, err = read_answer(call, self.tpl.schema, self.api.params.max_tokens)
            if obj is not None and not all(isinstance(obj.get(k), str) for k in SKILL_KEYS):
                obj, status, err = None, "failed", f"answer lacks string fields {list(SKILL_KEYS)}"
            if obj is None:
                per_group[g] = RowResult("", [], None, status, err, **ev)
            else:
                per_group[g] = RowResult("", [], None, status, err, skill=skill_json(*(obj[k] for k in SKILL_KEYS)), **ev)
        out = []
        for r in records:
            res = per_group[unit_of(r, self.per)]
            out.append(RowResult(r["rollout_id"], [], None, res.status, res.error, res.request_hash,
                                 res.raw_response, res.prompt_tokens, res.completion_tokens, res.cost_usd,
                                 res.skill if res.status in ("ok", "repaired") else r.get("skill")))
        return out


# --- skill bank with UCB selection ------------------------------------------------------------
@dataclass
class Arm:
    skill: str  # the skill JSON
    pulls: int = 0
    reward_sum: float = 0.0


@dataclass
class SkillBank:
    """Candidate skills per prompt; `select` picks the one the teacher sees by UCB1:
    mean reward + c * sqrt(ln(total pulls) / pulls), unpulled arms first (in insertion order).
    Rewards are whatever the trainer reports after using a skill (e.g. the group's mean reward
    or its improvement); ties break by insertion order, so selection is deterministic."""

    c: float = 1.0
    arms: dict[str, list[Arm]] = field(default_factory=dict)
    # the arm the teacher last used per prompt, credited with the student's reward when the prompt
    # comes back (train.skill_bank): the reward a skill earns is the one the student earns after it
    pending: dict[str, int] = field(default_factory=dict)

    def add(self, prompt_id: str, skill: str) -> None:
        arms = self.arms.setdefault(prompt_id, [])
        if all(a.skill != skill for a in arms):
            arms.append(Arm(skill))

    def select(self, prompt_id: str) -> tuple[int, str] | None:
        arms = self.arms.get(prompt_id)
        if not arms:
            return None
        for i, a in enumerate(arms):
            if a.pulls == 0:
                return i, a.skill
        total = sum(a.pulls for a in arms)
        scores = [a.reward_sum / a.pulls + self.c * math.sqrt(math.log(total) / a.pulls) for a in arms]
        i = max(range(len(arms)), key=lambda k: (scores[k], -k))
        return i, arms[i].skill

    def update(self, prompt_id: str, index: int, reward: float) -> None:
        a = self.arms[prompt_id][index]
        a.pulls += 1
        a.reward_sum += float(reward)

    @classmethod
    def from_records(cls, records: list[dict], c: float = 1.0) -> "SkillBank":
        bank = cls(c=c)
        for r in records:
            if r.get("skill"):
                bank.add(r.get("prompt_id") or r["rollout_id"], r["skill"])
        return bank

    def save(self, path: str | Path) -> None:
        data = {"c": self.c, "arms": {p: [a.__dict__ for a in arms] for p, arms in self.arms.items()},
                "pending": self.pending}
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
        tmp.replace(path)  # a kill mid-save leaves the previous bank

    @classmethod
    def load(cls, path: str | Path) -> "SkillBank":
        data = json.loads(Path(path).read_text())
        return cls(c=data["c"], arms={p: [Arm(**a) for a in arms] for p, arms in data["arms"].items()},
                   pending={p: int(i) for p, i in data.get("pending", {}).items()})


