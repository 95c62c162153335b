"""Schema migrations of existing stores. Old versions stay readable as they were written (time
travel never rewrites history); a migration adds new versions on top.

v1 -> v2 (`annotation` per annotator): in v1 the `annotation` column held one evidence struct per
row, overwritten by every annotation job. v2 holds a list with one entry per (source, annotator).
The migration rebuilds those entries from history: each version written by an annotation job
(lineage ``stage="annotate"``) set the struct of the rows it annotated, so a row's struct that
changed in that version is that job's annotator's evidence (lineage ``extra.source`` and
``annotator``). A struct no recorded job explains (imported with the data, say) is kept as one entry
of unknown origin. Two commits: Lance drops the v1 column (a version of its own, without lineage;
Lance cannot change a column's type in place), then `Store.add_columns` writes the v2 column with
lineage ``stage="migrate"``. A crash between the two is resumed by the next call: the evidence is
rebuilt from the last version that still holds the v1 column.
"""

from __future__ import annotations

import pyarrow as pa

from datastore.schema import ANNOTATION_TYPE, SCHEMA_VERSION


def _is_v1(schema: pa.Schema) -> bool:
    return "annotation" in schema.names and pa.types.is_struct(schema.field("annotation").type)


def _v1_source(store) -> int | None:
    """The version whose v1 `annotation` column the migration reads: the latest if it is v1, or
    the one before an interrupted migration's drop; None when there is nothing to migrate."""
    ds = store.dataset()
    if _is_v1(ds.schema):
        return ds.version
    if "annotation" in ds.schema.names:
        return None
    for info in reversed(store.versions()[:-1]):
        if "annotation" in store.schema(info.version).names:
            return info.version if _is_v1(store.schema(info.version)) else None
    return None


def _cells(store, version: int) -> dict[str, dict | None]:
    t = store.read(version, columns=["rollout_id", "annotation"])
    return dict(zip(t.column("rollout_id").to_pylist(), t.column("annotation").to_pylist()))


def rebuild_evidence(store, upto: int) -> dict[str, list[dict]]:
    """rollout_id -> v2 entries, from the v1 structs of versions up to `upto` (see module doc)."""
    by_row: dict[str, dict[tuple, dict]] = {}
    before: dict[str, dict | None] = {}
    for info in store.versions():
        if info.version > upto:
            break
        if not _is_v1(store.schema(info.version)):
            continue
        lin = info.lineage or {}
        now = _cells(store, info.version)
        if lin.get("stage") == "annotate" and lin.get("annotator"):
            who = ((lin.get("extra") or {}).get("source"), lin["annotator"])
            for rid, cell in now.items():
                if cell is not None and cell != before.get(rid):
                    by_row.setdefault(rid, {})[who] = {"source": who[0], "annotator": who[1], **cell,
                                                       "rerun_error": None}
        before = now
    for rid, cell in before.items():  # the latest v1 cells no recorded job explains
        if cell is not None and not any(all(e.get(k) == v for k, v in cell.items())
                                        for e in by_row.get(rid, {}).values()):
            by_row.setdefault(rid, {})[(None, None)] = {"source": None, "annotator": None, **cell, "rerun_error": None}
    return {rid: [e for _, e in sorted(d.items(), key=lambda kv: tuple(x or "" for x in kv[0]))]
            for rid, d in by_row.items()}


def migrate_evidence(store) -> int | None:
    """Convert a v1 store's `annotation` column to v2 (one entry per annotator). Returns the new
    version, or None when the store needs no migration. Safe to call again after a crash."""
    from datastore.lineage import Lineage

    if store.latest_version() is None:
        return None
    source = _v1_source(store)
    if source is None:
        return None
    entries = rebuild_evidence(store, source)
    ds = store.dataset()
    if _is_v1(ds.schema):
        ds.drop_columns(["annotation"])
    ids = store.read(columns=["rollout_id"]).column("rollout_id").to_pylist()
    table = pa.table({"rollout_id": pa.array(ids, pa.string()),
                      "annotation": pa.array([entries.get(r) for r in ids], ANNOTATION_TYPE)})
    n = sum(len(e) for e in entries.values())
    return store.add_columns(
        table, message=f"migrate: `annotation` evidence per annotator (schema v{SCHEMA_VERSION}), "
                       f"{n} entries on {len(entries)} rows rebuilt from versions <= {source}",
        lineage=Lineage(stage="migrate", extra={"from_schema": 1, "to_schema": SCHEMA_VERSION,
                                                 "read_version": source}))
