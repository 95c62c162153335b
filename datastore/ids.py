"""Row identity in the store: the id formulas every writer uses (`rollouts generate` and
`data import`'s derived ids), stable across processes and machines (sha256, never Python's `hash`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex sha256 of the parts joined unambiguously (JSON): stable across processes and machines."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:length]


def prompt_id_of(question: str) -> str:
    """Stable id of a prompt text (16 hex chars of sha256): the same question → the same id,
    on any machine and in any process (unlike Python's salted `hash`)."""
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def group_id_of(prompt_id: str, model: str, sampling: str) -> str:
    """The group of G samples of one prompt in one generation setting (model + sampling JSON,
    which includes the seed and backend). Resuming a run skips groups whose id is already stored."""
    return stable_hash("group", prompt_id, model, sampling)


def rollout_id_of(group_id: str, prompt_id: str, response: str, model: str, index: int) -> str:
    """Stable content hash of (prompt_id, response, model, sample index) — and the group, so that
    two runs with other seeds that happen to sample the same text never share an id."""
    return stable_hash("rollout", group_id, prompt_id, response, model, index)
