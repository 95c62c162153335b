"""Prompt sources for rollout generation: local HF `datasets` folders, JSONL, Parquet, the toy world.

A source's columns are mapped onto these fields (`--map SRC=FIELD`; same-named columns map
themselves):

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

from pathlib import Path
from typing import Any

from train.rollout import PromptRecord, stable_hash
from train.rollout import prompt_id_of

FIELDS = ("question", "messages", "prompt", "reference", "prompt_id")
TEXT_FIELDS = ("question", "messages", "prompt")


def parse_map(pairs: list[str] | None) -> dict[str, str]:
    """`["problem=question", "answer=reference"]` → `{"problem": "question", "answer": "reference"}`."""
    out: dict[str, str] = {}
    for p in pairs or []:
        src, sep, dst = p.partition("=")
        if not sep or not src or not dst:
            raise ValueError(f"bad --map {p!r}: expected SOURCE_COLUMN=FIELD")
        if dst not in FIELDS:
            raise ValueError(f"bad --map {p!r}: field {dst!r} is not one of {', '.join(FIELDS)}")
        out[src] = dst
    return out


def read_rows(src: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """All rows of a local source as dicts: a `.jsonl` file, a `.parquet` file, or a folder saved
    with HF `datasets` `save_to_disk` (a DatasetDict needs `split` unless it has one split)."""
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"prompt source {src} does not exist")
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        from datastore.io import iter_jsonl_objects

        with open(path, encoding="utf-8") as f:
            return [obj for _, obj, _ in iter_jsonl_objects(f, str(src))]
    if path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                if len(ds) != 1:
                    raise ValueError(f"prompt source {src} has splits {sorted(ds)}: pass --split")
                split = next(iter(ds))
            if split not in ds:
                raise ValueError(f"prompt source {src} has no split {split!r} (splits: {sorted(ds)})")
            ds = ds[split]
        return ds.to_list()
    raise ValueError(f"prompt source {src}: expected a .jsonl or .parquet file or a `datasets` folder")


def to_records(rows: list[dict[str, Any]], tokenizer, mapping: dict[str, str], source: str,
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
