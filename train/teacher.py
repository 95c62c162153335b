"""The self-distillation teacher: the student's own weights under a privileged prompt.

Teacher sequence = privileged prompt (the student's prompt plus the reference solution, the coarse
error type, or a skill summary, by template) + the student's response token ids, unchanged; so
teacher and student rows align on response tokens (see `train.scoring.ScoringBatch`).

The teacher's weights are the student's, used one of three ways (`Teacher(mode=...)`):
- "live": the student module itself, scored under `torch.no_grad()` (no extra memory);
- "copy": a frozen copy, refreshed from the student every `refresh_every` optimizer steps
  (TRACE uses 10);
- "ema":  a frozen copy updated after every optimizer step as θ_T ← d·θ_T + (1 − d)·θ_S.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from train.scoring import DEFAULT_CHUNK_ROWS, Scored, ScoringBatch, pack_batch, score
from train.teacher_templates import TEACHER_TEMPLATES  # its home imports no torch


class Scorer(Protocol):
    """Anything that scores a batch the way `train.scoring.score` does (transformers, vLLM)."""

    def score(self, batch: ScoringBatch, select_BT: Tensor | None = None, topk: int | None = None,
              token_logprobs: bool = True) -> Scored: ...


def render_skill(skill: str | Mapping[str, Any] | None) -> str:
    """Skill column (JSON `{success_analysis, mistake_analysis, golden_workflow}`) as prompt text."""
    if skill is None:
        return ""
    obj = json.loads(skill) if isinstance(skill, str) else dict(skill)
    if not isinstance(obj, dict):
        return str(obj)
    names = {"success_analysis": "What works", "mistake_analysis": "Common mistakes", "golden_workflow": "Workflow"}
    return "\n".join(f"{names.get(k, k)}: {v}" for k, v in obj.items() if v)


def render_privileged(row: Mapping[str, Any], template: str = "reference") -> str:
    """The privileged block for one rollout row (keys `reference`, `error_type`, `skill`)."""
    if template not in TEACHER_TEMPLATES:
        raise ValueError(f"unknown teacher template {template!r}; choose one of {', '.join(TEACHER_TEMPLATES)}")
    fields = {"reference": row.get("reference"), "error_type": row.get("error_type"), "skill": render_skill(row.get("skill"))}
    text = TEACHER_TEMPLATES[template]
    for name, value in fields.items():
        if "{" + name + "}" in text and not value:
            rid = row.get("rollout_id", "?")
            raise ValueError(f"teacher template {template!r} needs column {name!r}, empty for rollout {rid}")
    return text.format(**{k: v or "" for k, v in fields.items()})


def teacher_prompt_text(tokenizer: Any, row: Mapping[str, Any], template: str = "reference") -> str:
    """The teacher's prompt text: the student's conversation with the privileged block appended
    to its last user message (chat models), or placed before the raw prompt text otherwise, so
    that the response still follows the prompt exactly as the student saw it."""
    privileged = render_privileged(row, template)
    messages = row.get("messages")
    if messages:
        msgs = [dict(m) for m in messages]
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[last_user]["content"] = f"{msgs[last_user]['content']}\n\n{privileged}"
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return f"{privileged}\n\n{row['prompt']}"


def splice_privileged(tokenizer: Any, prompt_text: str, privileged: str) -> str:
    """The teacher prompt text for a rendered student prompt, built the way `teacher_prompt_text`
    builds it from a row: when `prompt_text` ends with the chat template's text after a user turn
    (e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``), the privileged block goes at the end of that
    user turn; otherwise it goes before the prompt. Used where only the prompt's token ids are
    kept (shards) and the privileged block is chosen at train time (Skill-SD's skill bank)."""
    suffix = _chat_suffix(tokenizer)
    if suffix and prompt_text.endswith(suffix):
        return f"{prompt_text[: len(prompt_text) - len(suffix)]}\n\n{privileged}{suffix}"
    return f"{privileged}\n\n{prompt_text}"


def _chat_suffix(tokenizer: Any) -> str:
    """What a chat template appends after the last user message's content (empty: no template)."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    marker = "\x00spanroute-marker\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                         add_generation_prompt=True)
    return text.split(marker, 1)[1] if marker in text else ""


def build_teacher_batch(
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    response_ids: Sequence[Sequence[int]],
    template: str = "reference",
) -> ScoringBatch:
    """Teacher inputs for a batch: privileged prompt ids + the student's response ids (unchanged)."""
    prompts = [tokenizer(teacher_prompt_text(tokenizer, r, template), add_special_tokens=False)["input_ids"] for r in rows]
    return pack_batch(prompts, response_ids, pad_id=_pad_id(tokenizer))


def build_student_batch(tokenizer: Any, prompts: Sequence[str], response_ids: Sequence[Sequence[int]]) -> ScoringBatch:
    """Student inputs: the rendered prompt text the policy saw + its response ids."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return pack_batch(ids, response_ids, pad_id=_pad_id(tokenizer))


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0))


class Teacher:
    """Transformers teacher with the student's weights: live, periodic copy, or EMA.

    Call `update(step)` after every optimizer step (`step` = optimizer steps done so far);
    `score(...)` never builds a graph.
    """

    MODES = ("live", "copy", "ema")

    def __init__(self, student: nn.Module, mode: str = "copy", refresh_every: int = 10, ema_decay: float = 0.99,
                 chunk_rows: int | None = DEFAULT_CHUNK_ROWS) -> None:
        if mode not in self.MODES:
            raise ValueError(f"teacher mode must be one of {', '.join(self.MODES)}, not {mode!r}")
        if refresh_every < 1 or not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"teacher: refresh_every must be ≥ 1 and ema_decay in [0, 1] (got {refresh_every}, {ema_decay})")
        self.student, self.mode = student, mode
        self.refresh_every, self.ema_decay, self.chunk_rows = refresh_every, ema_decay, chunk_rows
        self.model = student if mode == "live" else copy.deepcopy(student).requires_grad_(False).eval()
        self.last_refresh = 0

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Sync with the student after optimizer step `step`; returns whether the weights changed."""
        if self.mode == "live":
            return False
        if self.mode == "copy" and step % self.refresh_every != 0:
            return False
        t_params, s_params = list(self.model.parameters()), list(self.student.parameters())
        for t, s in zip(t_params, s_params, strict=True):
            if self.mode == "copy":
                t.copy_(s.detach())
            else:
                t.lerp_(s.detach().to(t.dtype), 1.0 - self.ema_decay)
        for tb, sb in zip(self.model.buffers(), self.student.buffers(), strict=True):
            tb.copy_(sb)
        self.last_refresh = step
        return True

    @torch.no_grad()
    def score(self, batch: ScoringBatch, select_BT: Tensor | None = None, topk: int | None = None,
              token_logprobs: bool = True) -> Scored:
        """Teacher log-probs of the sampled tokens (skip with `token_logprobs=False`, e.g. for
        TRACE), and hidden states (top-k) at `select_BT`."""
        was_training = self.model.training
        self.model.eval()  # no dropout in the teacher, also in live mode
        try:
            return score(self.model, batch, select_BT=select_BT, topk=topk, chunk_rows=self.chunk_rows,
                         token_logprobs=token_logprobs)
        finally:
            self.model.train(was_training)
