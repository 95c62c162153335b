"""Differences between two versions of the rollouts table, keyed by rollout_id."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Diff:
    """What changed from version ``a`` to version ``b``."""

    a: int
    b: int
    added: list[str]  # rollout_ids in b only
    removed: list[str]  # rollout_ids in a only
    changed: dict[str, tuple[str, ...]]  # rollout_id -> columns whose value differs
    columns_added: list[str]
    columns_removed: list[str]
    changed_by_column: dict[str, int] = field(default_factory=dict)  # column -> rows changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.columns_added or self.columns_removed)

    def summary(self) -> str:
        parts = [
            f"v{self.a} -> v{self.b}: +{len(self.added)} rows, -{len(self.removed)} rows, "
            f"{len(self.changed)} rows changed"
        ]
        if self.changed_by_column:
            parts.append("changed: " + ", ".join(f"{c} ({n})" for c, n in self.changed_by_column.items()))
        if self.columns_added:
            parts.append(f"columns added: {', '.join(self.columns_added)}")
        if self.columns_removed:
            parts.append(f"columns removed: {', '.join(self.columns_removed)}")
        return "; ".join(parts)


def _single(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _both_null(x: pa.Array, y: pa.Array) -> np.ndarray:
    return np.logical_and(
        x.is_null().to_numpy(zero_copy_only=False), y.is_null().to_numpy(zero_copy_only=False)
    )


def _flat_equal(x: pa.Array, y: pa.Array) -> np.ndarray:
    """Per-element equality of primitive/string arrays; null == null and NaN == NaN."""
    eq = pc.fill_null(pc.equal(x, y), False).to_numpy(zero_copy_only=False)
    eq = np.logical_or(eq, _both_null(x, y))
    if pa.types.is_floating(x.type):
        nx = pc.fill_null(pc.is_nan(x), False).to_numpy(zero_copy_only=False)
        ny = pc.fill_null(pc.is_nan(y), False).to_numpy(zero_copy_only=False)
        eq = np.logical_or(eq, np.logical_and(nx, ny))
    return eq


def _is_flat(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t))


def rows_equal(x: pa.Array, y: pa.Array) -> np.ndarray:
    """Bool per row: is row i of ``x`` equal to row i of ``y``? Vectorised for flat columns and
    lists of flat values (token ids, log-probs); nested structs compare as Python values."""
    n = len(x)
    if not x.type.equals(y.type):
        return np.zeros(n, dtype=bool)
    if x.equals(y):
        return np.ones(n, dtype=bool)
    if _is_flat(x.type):
        return _flat_equal(x, y)
    if pa.types.is_list(x.type) and _is_flat(x.type.value_type):
        lx = pc.fill_null(pc.list_value_length(x), -1).to_numpy(zero_copy_only=False)
        ly = pc.fill_null(pc.list_value_length(y), -1).to_numpy(zero_copy_only=False)
        eq = lx == ly
        sel = np.flatnonzero(np.logical_and(eq, lx > 0))
        if len(sel):
            xs, ys = x.take(pa.array(sel)), y.take(pa.array(sel))
            bad = ~_flat_equal(xs.flatten(), ys.flatten())
            if bad.any():
                parents = pc.list_parent_indices(xs).to_numpy(zero_copy_only=False)
                eq[sel[np.unique(parents[bad])]] = False
        return eq
    xl, yl = x.to_pylist(), y.to_pylist()
    return np.fromiter((u == v for u, v in zip(xl, yl)), dtype=bool, count=n)


def diff_tables(ta: pa.Table, tb: pa.Table, a: int, b: int) -> Diff:
    ida, idb = _single(ta.column("rollout_id")), _single(tb.column("rollout_id"))
    in_b = pc.is_in(ida, value_set=idb).to_numpy(zero_copy_only=False)
    in_a = pc.is_in(idb, value_set=ida).to_numpy(zero_copy_only=False)
    removed = ida.filter(pa.array(~in_b)).to_pylist()
    added = idb.filter(pa.array(~in_a)).to_pylist()
    common = [c for c in ta.column_names if c in tb.column_names and c != "rollout_id"]
    # Usual case (appends, updates): a's rows are b's prefix in the same order -> zero-copy slices.
    n = len(ida)
    if in_b.all() and len(idb) >= n and idb.slice(0, n).equals(ida):
        ra, rb = ta, tb.slice(0, n)
        keys = ida
    else:
        keep = pa.array(in_b)
        ra = ta.filter(keep)
        keys = _single(ra.column("rollout_id"))
        rb = tb.take(pc.index_in(keys, value_set=idb))
    changed_cols: dict[int, list[str]] = {}
    by_col: dict[str, int] = {}
    for c in common:
        eq = rows_equal(_single(ra.column(c)), _single(rb.column(c)))
        bad = np.flatnonzero(~eq)
        if len(bad):
            by_col[c] = len(bad)
            for i in bad:
                changed_cols.setdefault(int(i), []).append(c)
    key_list = keys.to_pylist() if changed_cols else []
    changed = {key_list[i]: tuple(cols) for i, cols in sorted(changed_cols.items())}
    return Diff(
        a=a,
        b=b,
        added=added,
        removed=removed,
        changed=changed,
        columns_added=[c for c in tb.column_names if c not in ta.column_names],
        columns_removed=[c for c in ta.column_names if c not in tb.column_names],
        changed_by_column=by_col,
    )
