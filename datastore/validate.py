"""Checking incoming rows against the declared schema. Nothing is inferred: types come from
``ROLLOUT_SCHEMA`` (or the store's own schema for columns added later), and every refusal names
where (file and line, or row), which rollout and which column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spans.model import LABELS, SOURCES



@dataclass(frozen=True)
class Where:
    """Names rows in error messages: ``rollouts.jsonl line 7`` or ``input table row 3``."""

    source: str = "input table"
    lines: Sequence[int] | None = None  # JSONL: the file line of each row

    def row(self, i: int) -> str:
        if self.lines is not None:
            return f"{self.source} line {self.lines[i]}"
        return f"{self.source} row {i}"

    def short(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i}"


class DataError(ValueError):
    """Input the store refuses. The message names file/line or row, rollout and column."""


def _where(where_: Where, table: pa.Table | None, i: int) -> str:
    where = where_.row(i)
    if table is not None and "rollout_id" in table.column_names:
        rid = table.column("rollout_id")[i].as_py()
        if rid is not None:
            where += f" (rollout_id={rid!r})"
    return where


# ---- types ---------------------------------------------------------------------------------


def _kind(t: pa.DataType) -> str:
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "list"
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return "list"
    if pa.types.is_struct(t):
        return "struct"
    return str(t)


def type_problem(src: pa.DataType, dst: pa.DataType, path: str) -> str | None:
    """Why ``src`` cannot be stored as ``dst`` without guessing, or None if it can.

    Allowed without loss of meaning: same type; all-null; string widths; integer -> integer
    (values range-checked later); integer/float -> float; lists of allowed; structs whose fields
    are a subset of the target's (missing ones become null).
    """
    if src.equals(dst):
        return None
    s, d = _kind(src), _kind(dst)
    if s == "null":
        return None
    if s == d and s in ("string", "int", "float", "bool"):
        return None
    if d == "float" and s == "int":
        return None
    if s == d == "list":
        return type_problem(src.value_type, dst.value_type, path + "[]")
    if s == d == "struct":
        names = {dst.field(i).name for i in range(dst.num_fields)}
        for i in range(src.num_fields):
            f = src.field(i)
            if f.name not in names:
                return f"column '{path}': unexpected field '{f.name}' (expected {dst})"
            p = type_problem(f.type, dst.field(f.name).type, f"{path}.{f.name}")
            if p:
                return p
        return None
    return f"column '{path}': expected {dst}, got {src}"


def conform_array(arr: pa.Array, dst: pa.DataType, path: str) -> pa.Array:
    """``arr`` as exactly ``dst`` (after ``type_problem`` said it may be). Raises ``pa.ArrowInvalid``
    on a value that does not fit (e.g. an int64 beyond int32); the caller finds the row."""
    if arr.type.equals(dst):
        return arr
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), dst)
    if pa.types.is_struct(dst):
        children = []
        src_names = {arr.type.field(i).name for i in range(arr.type.num_fields)}
        for i in range(dst.num_fields):
            f = dst.field(i)
            if f.name in src_names:
                children.append(conform_array(arr.field(f.name), f.type, f"{path}.{f.name}"))
            else:
                children.append(pa.nulls(len(arr), f.type))
        mask = arr.is_null() if arr.null_count else None
        return pa.StructArray.from_arrays(children, fields=list(dst), mask=mask)
    if pa.types.is_list(dst) and _kind(arr.type) == "list":
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
            arr = arr.cast(pa.list_(arr.type.value_type))
        if pa.types.is_large_list(arr.type):
            arr = arr.cast(pa.list_(arr.type.value_type))
        # A sliced ListArray's .values is the whole child array: cut it to this slice's range.
        offsets = arr.offsets
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        values = conform_array(arr.values.slice(first, last - first), dst.value_type, path + "[]")
        if first:
            offsets = pc.subtract(offsets, pa.scalar(first, offsets.type))
        mask = arr.is_null() if arr.null_count else None
        return pa.ListArray.from_arrays(offsets, values, type=dst, mask=mask)
    return arr.cast(dst, safe=True)


def _first_bad_row(arr: pa.Array, dst: pa.DataType, path: str) -> int:
    """Index of the first value that does not convert (binary search over slices)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            conform_array(arr.slice(lo, mid - lo), dst, path)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def python_column(values: list, field: pa.Field, locate: Where) -> pa.Array:
    """Python values (e.g. from JSON) -> an Arrow array of exactly ``field.type``, or a DataError
    naming the first row whose value does not fit."""
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        pass
    for i, v in enumerate(values):
        try:
            pa.array([v], type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
            shown = repr(v)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise DataError(
                f"{locate.row(i)}: column '{field.name}': expected {field.type}, got {shown} ({e})"
            ) from None
    raise DataError(f"{locate.source}: column '{field.name}': cannot build a {field.type} column")


# ---- tables --------------------------------------------------------------------------------


def conform_table(
    table: pa.Table,
    schema: pa.Schema,
    locate: Where,
    *,
    fill_missing: bool = True,
    required: tuple[str, ...] = (),
) -> pa.Table:
    """``table`` with exactly ``schema`` (order, types); missing nullable columns filled with nulls.

    Refuses unknown columns, missing required ones, wrong types, nulls in required columns and
    values out of range, naming the column and (for values) the first bad row.
    """
    names = set(schema.names)
    unknown = [c for c in table.column_names if c not in names]
    if unknown:
        raise DataError(
            f"{locate.source}: unknown column(s) {unknown}: not in the rollout schema or the store "
            f"(expected a subset of {schema.names}; rename with --map SRC=DST, drop with --map SRC=)"
        )
    dup = {c for c in table.column_names if table.column_names.count(c) > 1}
    if dup:
        raise DataError(f"{locate.source}: duplicate column(s) {sorted(dup)}")
    missing_req = [c for c in required if c not in table.column_names]
    if missing_req:
        raise DataError(f"{locate.source}: missing required column(s) {missing_req}")
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            if not fill_missing:
                continue
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        problem = type_problem(col.type, f.type, f.name)
        if problem:
            raise DataError(f"{locate.source}: {problem}")
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        try:
            arr = conform_array(arr, f.type, f.name)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            i = _first_bad_row(arr, f.type, f.name)
            raise DataError(
                f"{_where(locate, table, i)}: column '{f.name}': value does not fit {f.type} ({e})"
            ) from None
        if (f.name in required or not f.nullable) and arr.null_count:
            i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{_where(locate, table, i)}: column '{f.name}' is required but null")
        cols.append(arr)
    kept = [f for f in schema if fill_missing or f.name in table.column_names]
    return pa.Table.from_arrays(cols, schema=pa.schema(kept, metadata=schema.metadata))


def check_unique(ids: pa.Array, locate: Where, table: pa.Table | None = None) -> None:
    """Refuse a repeated rollout_id, naming both rows."""
    if len(ids) == 0:
        return
    counts = pc.value_counts(ids)
    dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dup):
        rid = dup[0].as_py()
        rows = np.flatnonzero(pc.equal(ids, rid).to_numpy(zero_copy_only=False))
        raise DataError(
            f"{locate.row(int(rows[1]))}: column 'rollout_id': duplicate {rid!r} "
            f"(also at {locate.short(int(rows[0]))})"
        )


def span_problem(response: str | None, span: dict) -> str | None:
    """Why one span is invalid for its response, or None. Offsets are code points, end exclusive."""
    for k in ("start", "end", "label", "source", "text"):
        if span.get(k) is None:
            return f"span field '{k}' is null"
    s, e, text = span["start"], span["end"], span["text"]
    if span["label"] not in LABELS:
        return f"label {span['label']!r} not in {LABELS}"
    if span["source"] not in SOURCES:
        return f"source {span['source']!r} not in {SOURCES}"
    if response is None:
        return "row has spans but no response"
    if not (0 <= s < e <= len(response)):
        return f"span [{s}, {e}) outside the response (length {len(response)} code points)"
    if response[s:e] != text:
        return f"span [{s}, {e}) text {text!r} != response[{s}:{e}] {response[s:e]!r}"
    return None


def check_spans(spans: pa.Array, responses: pa.Array, locate: Where, table: pa.Table | None = None) -> None:
    """Every span: in range, non-empty, ``response[start:end] == text``, label and source allowed.
    Only rows that carry spans are converted to Python (responses can be large)."""
    if spans.null_count == len(spans):
        return
    lengths = pc.fill_null(pc.list_value_length(spans), 0).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(lengths)
    if not len(rows):
        return
    sel = pa.array(rows)
    for i, sp, resp in zip(rows, spans.take(sel).to_pylist(), responses.take(sel).to_pylist()):
        for j, span in enumerate(sp):
            problem = span_problem(resp, span)
            if problem:
                raise DataError(f"{_where(locate, table, int(i))}: column 'spans'[{j}]: {problem}")
