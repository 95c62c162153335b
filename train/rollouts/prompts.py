"""Prompt sources for rollout generation: local HF `datasets` folders, JSONL, Parquet (read by
`datastore.io.read_rows`), reasoning-gym tasks, the toy world.

A source's columns are mapped onto these fields (`--map SRC=FIELD`; same-named columns map
themselves; `SRC=` drops a column):

| field       | type                        | meaning                                                  |
|-------------|-----------------------------|----------------------------------------------------------|
| `question`  | string                      | the user turn; the chat template is applied to it        |
| `messages`  | list<struct<role,content>>  | a whole chat; the template is applied to it              |
| `prompt`    | string                      | already-rendered prompt text, used as is                 |
| `reference` | string (or integer)         | what the verifier compares with (required)               |
| `prompt_id` | string                      | optional; else a stable hash of the question/messages/prompt |

Exactly one of `question`, `messages`, `prompt` must be present. Errors name the file, row and
column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datastore.ids import prompt_id_of, stable_hash
from train.rollouts.generate import PromptRecord

FIELDS = ("question", "messages", "prompt", "reference", "prompt_id")
TEXT_FIELDS = ("question", "messages", "prompt")


@dataclass(frozen=True)
class PromptSource:
    """Where prompts come from: exactly one of `path` (a `.jsonl`/`.parquet` file, a `datasets`
    folder, or `reasoning-gym:TASK?...`) and `toy` (N generated toy problems). `mapping` is the
    `--map SRC=FIELD` list; `limit` keeps the first N prompts."""

    path: str | None = None
    toy: int | None = None
    toy_seed: int = 0
    mapping: tuple[str, ...] = ()
    split: str | None = None
    system: str | None = None
    limit: int | None = None


def load_prompts(src: PromptSource, tokenizer) -> tuple[list[PromptRecord], dict[str, Any]]:
    """Prompt records rendered with `tokenizer`'s chat template, and a description of their source
    (for lineage). Files are read by the datastore's reader (`datastore.io.read_rows`) and `--map`
    parsed by its parser, so `data import` and `rollouts generate` accept the same sources."""
    from datastore.io import parse_mapping, read_rows

    if (src.path is None) == (src.toy is None):
        raise ValueError("give exactly one of --prompts SRC or --toy N")
    if src.toy is not None:
        from train.toy import make_problems, toy_prompt_records

        records = toy_prompt_records(make_problems(src.toy, seed=src.toy_seed), tokenizer)
        source = {"toy": src.toy, "toy_seed": src.toy_seed}
    elif src.path.startswith("reasoning-gym:"):
        from train.rollouts.reasoning_gym_tasks import task_rows

        rows, source = task_rows(src.path)
        records = to_records(rows, tokenizer, {}, source=src.path, system=src.system)
        source = {**source, "system": src.system}
    else:
        m = parse_mapping(list(src.mapping), FIELDS)
        records = to_records(read_rows(src.path, src.split), tokenizer, m, source=str(src.path), system=src.system)
        source = {"path": str(src.path), "map": m, "split": src.split, "system": src.system}
    if src.limit is not None:
        records = records[: src.limit]
    return records, source


def to_records(rows: list[dict[str, Any]], tokenizer, mapping: dict[str, str | None], source: str,
               system: str | None = None) -> list[PromptRecord]:
    """Map rows onto the prompt fields and render each prompt with the tokenizer's chat template
    (`system`, if given, becomes a system turn before a `question`)."""
    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(rows):
        where = f"{source} row {i}"
        row = {mapping.get(k, k): v for k, v in raw.items() if mapping.get(k, k) in FIELDS}
        present = [f for f in TEXT_FIELDS if row.get(f) is not None]
        if len(present) != 1:
            raise ValueError(
                f"{where}: need exactly one of columns {TEXT_FIELDS} (after --map), found {present or 'none'}; "
                f"columns: {sorted(raw)}"
            )
        if row.get("reference") is None:
            raise ValueError(f"{where}: column 'reference' is missing or null (map one with --map COL=reference)")
        reference = row["reference"]
        if not isinstance(reference, (str, int)) or isinstance(reference, bool):
            raise ValueError(f"{where}: column 'reference' must be a string or integer, got {type(reference).__name__}")
        kind = present[0]
        if kind == "prompt":
            text, messages = _str(row["prompt"], where, "prompt"), None
            pid = prompt_id_of(text)
        else:
            if kind == "question":
                q = _str(row["question"], where, "question")
                messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
                pid = prompt_id_of(q) if not system else stable_hash("messages", messages)
            else:
                messages = _messages(row["messages"], where)
                pid = stable_hash("messages", messages)
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pid = str(row["prompt_id"]) if row.get("prompt_id") is not None else pid
        if pid in seen:
            raise ValueError(f"{where}: prompt_id {pid!r} repeats row {seen[pid]} (duplicate prompt)")
        seen[pid] = i
        records.append(
            PromptRecord(
                prompt_id=pid,
                prompt=text,
                reference=str(reference),
                messages=tuple((m["role"], m["content"]) for m in messages) if messages else None,
            )
        )
    return records


def _str(v: Any, where: str, col: str) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where}: column {col!r} must be a non-empty string")
    return v


def _messages(v: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(v, list) or not v:
        raise ValueError(f"{where}: column 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for j, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: column 'messages' item {j} must be {{role: str, content: str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out
