"""Reading rollouts from JSONL / Parquet / HF `datasets` directories, and writing exports.

Import never guesses types: JSON values are converted straight to the store's declared Arrow types
(a value that does not fit is refused with its file, line and column), Parquet/HF columns must have
compatible declared types. A column mapping renames source columns (``{"src": "dst"}``) or drops
them (``{"src": None}``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa

from datastore.schema import ROLLOUT_SCHEMA
from datastore.validate import DataError, Where, python_column

FORMATS = ("hf", "parquet", "jsonl")
PROGRESS_MIN_BYTES = 64 << 20  # show a progress bar for JSONL work beyond this size


def _progress(total: int, what: str):
    """A transient rich progress bar on stderr, disabled for small jobs."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(what), BarColumn(), TimeRemainingColumn(), transient=True,
                    console=Console(stderr=True), disable=total < PROGRESS_MIN_BYTES)


def parse_mapping(pairs: list[str] | None, fields: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """``["src=dst", "junk="]`` -> ``{"src": "dst", "junk": None}`` (empty dst drops the column).
    The one `--map` parser: `data import` maps onto store columns (checked when reading, against the
    schema), `rollouts generate` onto its prompt `fields` (checked here)."""
    out: dict[str, str | None] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ValueError(f"bad --map {p!r}: expected SRC=DST (or SRC= to drop a column)")
        src, dst = p.split("=", 1)
        if not src.strip():
            raise ValueError(f"bad --map {p!r}: empty source column name")
        dst = dst.strip() or None
        if fields is not None and dst is not None and dst not in fields:
            raise ValueError(f"bad --map {p!r}: field {dst!r} is not one of {', '.join(fields)}")
        out[src.strip()] = dst
    return out


def _apply_mapping(names: list[str], mapping: dict[str, str | None], source: str) -> dict[str, str | None]:
    unknown = [s for s in mapping if s not in names]
    if unknown:
        raise DataError(f"{source}: --map names column(s) {unknown} that the source does not have")
    return {n: mapping.get(n, n) if n in mapping else n for n in names}


def iter_jsonl_objects(lines, source: str):
    """Yields (line number, object, characters read so far) for each non-blank line of a JSONL
    stream; a malformed line or a non-object is refused with its file and line number."""
    done = 0
    for n, line in enumerate(lines, start=1):
        done += len(line)  # characters ~ bytes: good enough for a progress bar
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{source} line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{source} line {n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj, done


def read_jsonl(path: Path, schema: pa.Schema, mapping: dict[str, str | None]) -> tuple[pa.Table, Where]:
    """One JSON object per line (blank lines skipped) -> a table of exactly ``schema``'s types for
    the keys present. Malformed lines, non-objects and values of the wrong type are refused."""
    rows: list[dict] = []
    lines: list[int] = []
    source = str(path)
    size = path.stat().st_size
    with open(path, encoding="utf-8") as f, _progress(size, f"reading {path.name}") as bar:
        task = bar.add_task("read", total=size)
        done = 0
        for n, obj, done in iter_jsonl_objects(f, source):
            if n % 10_000 == 0:
                bar.update(task, completed=done)
            rows.append(obj)
            lines.append(n)
    where = Where(source, lines)
    if not rows:
        raise DataError(f"{source}: no rows")
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        for k in r:
            seen.setdefault(k, i)
    for k in mapping:
        if k not in seen:
            raise DataError(f"{source}: --map names column {k!r} that no line has")
    renamed: dict[str, list] = {}
    first_row: dict[str, int] = {}
    for key, i in seen.items():
        dst = mapping.get(key, key) if key in mapping else key
        if dst is None:
            continue
        if dst not in schema.names:
            raise DataError(
                f"{where.row(i)}: unknown column {dst!r} (not in the rollout schema or the store; "
                f"rename with --map {key}=NAME or drop with --map {key}=)"
            )
        if dst in renamed:
            raise DataError(f"{source}: two source columns map to {dst!r}")
        renamed[dst] = [r.get(key) for r in rows]
        first_row[dst] = i
    arrays, fields = [], []
    for f in schema:
        if f.name in renamed:
            arrays.append(python_column(renamed[f.name], f, where))
            fields.append(f)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), where


def _rename(table: pa.Table, mapping: dict[str, str | None], source: str) -> pa.Table:
    plan = _apply_mapping(table.column_names, mapping, source)
    keep = [n for n in table.column_names if plan[n] is not None]
    table = table.select(keep)
    return table.rename_columns([plan[n] for n in keep])


def _source_kind(path: Path) -> str:
    """``jsonl``, ``parquet`` or ``hf`` (a ``save_to_disk`` directory); anything else is refused."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        return "parquet"
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        return "hf"
    raise DataError(
        f"{path}: unknown source kind; expected a .jsonl/.parquet file, a directory of .parquet "
        f"files, or an HF datasets save_to_disk directory"
    )


def _read_arrow(path: Path, kind: str, split: str | None) -> pa.Table:
    """A Parquet or HF source as one Arrow table, types as declared there. An HF DatasetDict needs
    `split` unless it has a single split."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None and len(ds) != 1:
            raise DataError(
                f"{path}: an HF DatasetDict with splits {list(ds)}; pick one with --split where the command "
                f"has it, or read one split's directory, e.g. {path / next(iter(ds))}"
            )
        split = next(iter(ds)) if split is None else split
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (splits: {list(ds)})")
        ds = ds[split]
    if ds._indices is not None:  # a filtered/shuffled view: materialise the selected rows
        return ds.flatten_indices().data.table
    return ds.data.table


def read_source(src: str | Path, schema: pa.Schema, mapping: dict[str, str | None] | None = None) -> tuple[pa.Table, Where]:
    """Read ``src`` (``.jsonl``/``.ndjson``/``.json`` lines, ``.parquet`` file or directory of them,
    or an HF ``save_to_disk`` directory) and apply ``mapping``."""
    path = Path(src)
    mapping = mapping or {}
    kind = _source_kind(path)
    if kind == "jsonl":
        return read_jsonl(path, schema, mapping)
    return _rename(_read_arrow(path, kind, None), mapping, str(path)), Where(str(path))


def read_rows(src: str | Path, split: str | None = None) -> list[dict]:
    """Every row of a source of the kinds `read_source` reads, as plain dicts with no schema applied
    (the rollouts stage's prompt sources: their columns are mapped later, onto prompt fields)."""
    path = Path(src)
    kind = _source_kind(path)
    if kind == "jsonl":
        with open(path, encoding="utf-8") as f:
            return [obj for _, obj, _ in iter_jsonl_objects(f, str(path))]
    return _read_arrow(path, kind, split).to_pylist()


def _json_default(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    return str(v)


def export_table(table: pa.Table | None, to: Path, format: str, *, hf=None) -> Path:
    """Write ``table`` (or the HF dataset ``hf``) to ``to`` atomically: a temporary sibling is
    written then renamed, so a crash never leaves a half export under the final name."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if to.exists():
        raise FileExistsError(f"{to} already exists; remove it or choose another --out")
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    try:
        if format == "hf":
            hf.save_to_disk(str(tmp))
        elif format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f, _progress(table.nbytes, f"writing {to.name}") as bar:
                task = bar.add_task("write", total=table.num_rows)
                for batch in table.to_batches(max_chunksize=4096):
                    for row in batch.to_pylist():
                        f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
                    bar.advance(task, batch.num_rows)
        os.replace(tmp, to)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return to


def derive_missing(table: pa.Table, *, correct_above: float = 0.0) -> tuple[pa.Table, list[str]]:
    """Fill the ids and `correct` that rollouts from another tool lack, as `rollouts generate` would.

    For rows where a column is absent or null (mapped columns are kept as they are):

    - ``prompt_id`` = ``datastore.ids.prompt_id_of(prompt)``: 16 hex chars of sha256 of the prompt text;
    - ``group_id`` = ``datastore.ids.group_id_of(prompt_id, model or "", "")``: the rows of one
      prompt from one model form one group (map a ``group_id`` column to group otherwise);
    - ``rollout_id`` = ``datastore.ids.rollout_id_of(group_id, prompt_id, response, model or "",
      index)``, index = the row's position within its group in the source's order;
    - ``correct`` = ``reward > correct_above`` where `reward` is set.

    Returns the table and one line per derived column saying what was derived for how many rows.
    A row lacking `prompt` or `response` is left as it is (the write refuses it, naming the row).
    """
    from datastore.ids import group_id_of, prompt_id_of, rollout_id_of  # the formulas `rollouts generate` uses too

    n = table.num_rows
    col = {c: table.column(c).to_pylist() if c in table.column_names else [None] * n
           for c in ("prompt", "response", "model", "prompt_id", "group_id", "rollout_id", "reward", "correct")}
    notes: list[str] = []
    derived: dict[str, list] = {}

    def fill(name: str, value, formula: str) -> None:
        old = col[name]
        # derive only from values of the right type; anything else is left for the write to refuse
        todo = [i for i in range(n) if old[i] is None and isinstance(col["prompt"][i], str)
                and isinstance(col["response"][i], str)]
        if name == "correct":
            todo = [i for i in range(n) if old[i] is None and isinstance(col["reward"][i], (int, float))]
        if not todo:
            return
        new = list(old)
        for i in todo:
            new[i] = value(i)
        col[name] = derived[name] = new
        notes.append(f"derived {name} = {formula} for {len(todo)} of {n} rows")

    fill("prompt_id", lambda i: prompt_id_of(col["prompt"][i]), "sha256(prompt)[:16]")
    fill("group_id", lambda i: group_id_of(col["prompt_id"][i], col["model"][i] or "", ""),
         "group_id_of(prompt_id, model, '')")
    if "group_id" in derived:
        notes[-1] += f" ({len({g for g in col['group_id'] if g is not None})} groups)"
    index: dict[str, int] = {}
    seq = [index.__setitem__(g, index.get(g, -1) + 1) or index[g] for g in col["group_id"]]
    fill("rollout_id", lambda i: rollout_id_of(col["group_id"][i], col["prompt_id"][i], col["response"][i],
                                               col["model"][i] or "", seq[i]),
         "rollout_id_of(group_id, prompt_id, response, model, index in group)")
    fill("correct", lambda i: float(col["reward"][i]) > correct_above, f"reward > {correct_above:g}")
    if "correct" in derived:
        notes[-1] += f" ({sum(bool(c) for c in col['correct'])} correct)"
    for name, values in derived.items():
        field = ROLLOUT_SCHEMA.field(name)
        arr = pa.array(values, type=field.type)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), field, arr)
        else:
            table = table.append_column(field, arr)
    return table, notes
