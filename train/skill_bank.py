"""Skill-SD's skill bank as the trainer reads it: per prompt, the teacher's skill picked by UCB.

The bank (`annotate.skills.SkillBank`, a JSON file written by `spanroute skills extract --bank`
or by `add_summaries`) holds candidate skills per prompt id. At each optimizer step, for each
prompt group in the batch:

1. if the teacher used one of the prompt's skills the last time the prompt was trained on, that
   arm is credited with the mean reward the student earns on the prompt now (the rollouts of this
   batch were sampled after that training): UCB's reward is the student's reward after the skill;
2. an arm is selected by UCB1 (unpulled arms first) and the group's teacher prompt is rebuilt with
   that skill (`train.teacher.splice_privileged` on the decoded student prompt), replacing the
   shard's row-skill prompt; prompts absent from the bank keep the shard's prompt (index -1).

Every choice is logged per row to ``<run.out>/teacher_skills.jsonl`` (step, rollout id, prompt id,
skill index, sha256 of the skill) so a trained batch can be traced to the skill its teacher saw.
The bank is saved back with each checkpoint, so a resumed run continues from the same arms.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from annotate.skills import SkillBank
from train.teacher import render_privileged, splice_privileged


def add_summaries(path: str | Path, records: Iterable[dict[str, Any]], c: float = 1.0) -> int:
    """Add each record's `skill` (JSON string) under its `prompt_id` to the bank at `path`
    (created with exploration constant `c` if missing); returns how many new arms were added.
    For online rounds: call it after each round's skill extraction, before training."""
    p = Path(path)
    bank = SkillBank.load(p) if p.exists() else SkillBank(c=c)
    before = sum(len(a) for a in bank.arms.values())
    for r in records:
        if r.get("skill"):
            bank.add(r.get("prompt_id") or r["rollout_id"], r["skill"])
    p.parent.mkdir(parents=True, exist_ok=True)
    bank.save(p)
    return sum(len(a) for a in bank.arms.values()) - before


def skill_sha(skill: str) -> str:
    return hashlib.sha256(skill.encode()).hexdigest()[:16]


class SkillRouter:
    """Applies the bank to a step's rows (`assign`) and logs the choices; `save` writes it back."""

    def __init__(self, path: str | Path, tokenizer: Any, prompt_key: str, log_path: Path | None, start_step: int):
        self.path, self.tokenizer, self.prompt_key = Path(path), tokenizer, prompt_key
        if not self.path.is_file():
            raise FileNotFoundError(f"method.skill_bank {self.path} does not exist (make one with "
                                    "`spanroute skills extract --bank`)")
        self.bank = SkillBank.load(self.path)
        self.log_path = log_path
        if log_path is not None and log_path.exists():  # a resumed run drops choices past its checkpoint
            kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] < start_step]
            log_path.write_text("".join(ln + "\n" for ln in kept))
        self._prompt_text: dict[tuple[int, ...], str] = {}

    def assign(self, rows: list[dict], step: int) -> tuple[list[dict], dict[str, float]]:
        """Rows with the teacher prompt of their group's UCB-chosen skill; plus step metrics
        (``skill_bank_hits``: fraction of groups found in the bank; ``skill_credit``: mean
        reward credited to arms this step, when any)."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r["prompt_id"], []).append(i)
        out, choices, credited = list(rows), [], []
        for pid, idx in groups.items():
            reward = sum(float(rows[i]["reward"]) for i in idx) / len(idx)
            if pid in self.bank.pending and pid in self.bank.arms:
                self.bank.update(pid, self.bank.pending[pid], reward)
                credited.append(reward)
            pick = self.bank.select(pid)
            if pick is None:
                choices += [(rows[i], -1, "") for i in idx]
                continue
            k, skill = pick
            self.bank.pending[pid] = k
            ids = self._teacher_ids(rows[idx[0]]["prompt_ids"], skill)
            for i in idx:
                out[i] = {**rows[i], self.prompt_key: ids}
                choices.append((rows[i], k, skill))
        self._log(step, choices)
        metrics = {"skill_bank_hits": sum(1 for p in groups if p in self.bank.arms) / max(len(groups), 1)}
        if credited:
            metrics["skill_credit"] = sum(credited) / len(credited)
        return out, metrics

    def _teacher_ids(self, prompt_ids: list[int], skill: str) -> list[int]:
        key = tuple(prompt_ids)
        if key not in self._prompt_text:
            self._prompt_text[key] = self.tokenizer.decode(prompt_ids, skip_special_tokens=False,
                                                           clean_up_tokenization_spaces=False)
        text = splice_privileged(self.tokenizer, self._prompt_text[key], render_privileged({"skill": skill}, "skill"))
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _log(self, step: int, choices: list[tuple[dict, int, str]]) -> None:
        if self.log_path is None:
            return
        with self.log_path.open("a") as f:
            for r, k, skill in choices:
                f.write(json.dumps({"step": step, "rollout_id": r["rollout_id"], "prompt_id": r["prompt_id"],
                                    "skill_index": k, "skill_sha256": skill_sha(skill) if skill else None}) + "\n")

    def save(self) -> None:
        self.bank.save(self.path)
