"""reasoning-gym tasks as a prompt source and a verifier (optional extra `spanroute[tasks]`,
`reasoning-gym==0.1.25`, imported lazily).

Prompt source: `reasoning-gym:TASK?size=N&seed=S&KEY=VALUE...` builds `reasoning_gym.create_dataset(
TASK, size=N, seed=S, KEY=VALUE...)` (defaults size=100, seed=0; values read as int, float, true/false
or text). Each entry becomes one prompt: its `question` is the user turn, its `reference` a JSON
object `{"task", "config", "index", "answer", "metadata"}` (the task name and the entry's own metadata
are stored with every rollout), its `prompt_id` a hash of (task, config, index).

Verifier `reasoning-gym`: extracts the final answer from the response (below) and scores it with the
task's own `score_answer(answer, entry)`, on the dataset rebuilt from the stored config; reward is
that score (0..1, some tasks give partial credit), correct means reward == 1. reasoning-gym's scorers
expect an *extracted* answer: on a whole response they credit only a response that is the answer.
Extraction, first that applies: the last `<answer>...</answer>` (reasoning-gym's own format), the last
`\\boxed{...}`, the last `Answer: ...` line; else, when the reference answer is a number, the last
number written (any form `train.rollouts.verify.numbers` reads); else the last non-empty line. An extracted
answer that is one integer (e.g. `−214`, `２１４`, `1,214`) is passed on in ASCII digits.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

PREFIX = "reasoning-gym:"
DEFAULTS = {"size": 100, "seed": 0}


def _import():
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError("reasoning-gym tasks need the package: pip install 'spanroute[tasks]' "
                          "(reasoning-gym==0.1.25)") from e
    return reasoning_gym


def value_of(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`reasoning-gym:chain_sum?size=6&seed=3` -> `("chain_sum", {"size": 6, "seed": 3})`.
    Raises ValueError naming the spec when the task is missing or unknown."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    task, _, query = body.partition("?")
    if not task:
        raise ValueError(f"--prompts {spec!r}: expected reasoning-gym:TASK?size=N&seed=S")
    config = {**DEFAULTS, **{k: value_of(v) for k, v in parse_qsl(query, keep_blank_values=True)}}
    known = _import().factory.DATASETS
    if task not in known:
        raise ValueError(f"--prompts {spec!r}: unknown reasoning-gym task {task!r} "
                         f"({len(known)} tasks, e.g. {', '.join(sorted(known)[:6])})")
    return task, config


@lru_cache(maxsize=32)
def _dataset(task: str, config_json: str):
    return _import().create_dataset(task, **json.loads(config_json))


def task_rows(spec: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prompt rows (`question`, `reference`, `prompt_id`) of a reasoning-gym spec, and its lineage."""
    from datastore.ids import stable_hash

    task, config = parse_spec(spec)
    cfg = json.dumps(config, sort_keys=True)
    ds = _dataset(task, cfg)
    rows = []
    for i in range(len(ds)):
        entry = ds[i]
        reference = {"task": task, "config": config, "index": i, "answer": entry["answer"],
                     "metadata": entry.get("metadata", {})}
        rows.append({"question": entry["question"], "prompt_id": stable_hash("reasoning-gym", task, config, i),
                     "reference": json.dumps(reference, sort_keys=True, default=str, ensure_ascii=False)})
    return rows, {"reasoning_gym": task, "config": config}


_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:\uff1a]\s*\**\s*(.+)", re.IGNORECASE)


def extract_answer(response: str, numeric: bool) -> str | None:
    """The final answer written in `response` (rules in the module docstring); None if empty."""
    from train.rollouts.numbers import NUMBER, as_int, number_value, numbers

    for rx in (_TAG, _BOXED, _ANSWER_LINE):
        found = rx.findall(response)
        if found:
            answer = found[-1].strip().rstrip(".").strip("*").strip()
            break
    else:
        if numeric:
            values = numbers(response)
            if not values:
                return None
            v = values[-1]
            return str(v.numerator) if v.denominator == 1 else str(float(v))
        lines = [ln.strip() for ln in response.splitlines() if ln.strip()]
        return lines[-1] if lines else None
    m = NUMBER.fullmatch(answer)
    if m and as_int(number_value(m)) is not None:
        return str(as_int(number_value(m)))
    return answer


def reasoning_gym_verify(response: str, reference: str) -> tuple[float, bool]:
    """Score a response with the task's own `score_answer` (reference: a `task_rows` reference)."""
    from train.rollouts.numbers import NUMBER

    try:
        ref = json.loads(reference)
        task, config, index = ref["task"], ref["config"], ref["index"]
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"reference {reference[:80]!r} is not a reasoning-gym entry "
                         "(generate with --prompts reasoning-gym:TASK)") from None
    entry = {"answer": ref["answer"], "metadata": ref.get("metadata", {})}
    ds = _dataset(task, json.dumps(config, sort_keys=True))
    entry = ds[index] if index < len(ds) and ds[index]["answer"] == ref["answer"] else entry
    answer = extract_answer(response, numeric=NUMBER.fullmatch(str(ref["answer"]).strip()) is not None)
    score = float(ds.score_answer(answer, entry)) if answer is not None else 0.0
    return score, score >= 1.0
