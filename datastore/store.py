"""`Store`: a directory holding the rollouts table as a versioned Lance dataset.

Every write, update or add_columns is one Lance commit, i.e. one new immutable version; its
lineage rides in that commit's transaction properties (see ``lineage.py``). Lance commits are
atomic manifest writes, so a writer killed at any point leaves the previous version as the latest
and intact (its half-written data files are unreferenced garbage, never read).

Concurrency: appends from many processes commute, and Lance rebases them itself. An update or
add_columns that races another commit fails with a *retryable* conflict; we then re-open the
latest version, redo the work against it (validation included) and commit again, so no writer's
version is ever lost.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datastore.diff import Diff, diff_tables
from datastore.lineage import (
    LINEAGE_KEY,
    MESSAGE_KEY,
    Lineage,
    VersionInfo,
    lineage_from_properties,
)
from datastore.schema import (
    REQUIRED_COLUMNS,
    ROLLOUT_SCHEMA,
    SCHEMA_VERSION,
    TOKEN_COLUMNS,
)
from datastore.validate import DataError, Where, check_spans, check_unique, conform_table
from datastore.verify import VerifyReport, verify_table

TABLE_NAME = "rollouts"
TAG_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# Columns that define the sample itself: changing them means a different rollout, not an update.
IMMUTABLE_COLUMNS = ("rollout_id", "prompt_id", "group_id", "prompt", "messages", "response", *TOKEN_COLUMNS)
MAX_COMMIT_TRIES = 60


class StoreError(RuntimeError):
    """A request the store cannot serve (unknown version or tag, empty store, ...)."""


class NotAStoreError(StoreError):
    """A path given as a store that holds no store (a typo, or a folder nothing has written to)."""


def is_store(path: str | Path, table: str = TABLE_NAME) -> bool:
    """Whether ``path`` holds a store (its ``<table>.lance`` folder), even one with no version yet."""
    return (Path(path) / f"{table}.lance").is_dir()


def not_a_store_message(path: str | Path, table: str = TABLE_NAME) -> str:
    """``not a spanroute store: PATH`` plus a hint: a near store name next to it, the store that
    holds PATH, or the commands that create one. One line."""
    p = Path(path)
    if p.suffix == ".lance" and is_store(p.parent, p.stem):
        return f"not a spanroute store: {path} (did you mean {p.parent}?)"
    near: list[str] = []
    parent = p.parent if str(p.parent) else Path(".")
    if parent.is_dir():
        names = [c.name for c in parent.iterdir() if c.is_dir() and is_store(c, table)]
        near = difflib.get_close_matches(p.name, names, n=1, cutoff=0.6)
    if not near and p.is_dir():  # the folder above the store, e.g. runs/ for runs/store
        near = [c.name for c in sorted(p.iterdir()) if c.is_dir() and is_store(c, table)][:1]
        parent = p
    if near:
        return f"not a spanroute store: {path} (did you mean {parent / near[0]}?)"
    return (f"not a spanroute store: {path} (`spanroute rollouts generate` or `spanroute data import` "
            "creates one)")


def _is_retryable(e: BaseException) -> bool:
    from lance.commit import CommitConflictError

    if isinstance(e, CommitConflictError):
        return True
    msg = str(e)
    return isinstance(e, OSError) and ("Retryable commit conflict" in msg or "preempted" in msg)


class Store:
    """A versioned rollout store in directory ``path`` (created on first write)."""

    def __init__(self, path: str | Path, *, table: str = TABLE_NAME):
        self.path = Path(path)
        self.table = table
        self.uri = str(self.path / f"{table}.lance")

    @classmethod
    def open(cls, path: str | Path, *, table: str = TABLE_NAME) -> "Store":
        """An existing store (for readers); raises ``NotAStoreError`` naming ``path`` when it holds
        none, with "did you mean" for a store of a near name. ``Store(path)`` instead creates the
        store on its first write."""
        store = cls(path, table=table)
        store._check_is_store()
        return store

    def _check_is_store(self) -> None:
        if not Path(self.uri).is_dir():
            raise NotAStoreError(not_a_store_message(self.path, self.table))

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---- opening and resolving -----------------------------------------------------------------

    def _open(self, version: int | str | None = None):
        import lance

        # A creator killed before its first commit leaves data files but no manifest: that is
        # still an empty store (the next create ignores the orphans).
        versions = Path(self.uri) / "_versions"
        if not versions.is_dir() or not any(versions.glob("*.manifest")):
            return None
        return lance.dataset(self.uri, version=version)

    def _require(self):
        self._check_is_store()
        ds = self._open()
        if ds is None:
            raise StoreError(f"store {self.path} is empty (no versions yet): `spanroute rollouts generate` or `spanroute data import` writes the first one")
        return ds

    def latest_version(self) -> int | None:
        ds = self._open()
        return None if ds is None else ds.version

    def resolve(self, version: int | str | None = None) -> int:
        """A version number from a number, a numeric string, a tag name, or None (latest)."""
        ds = self._require()
        if version is None:
            return ds.version
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if isinstance(version, int):
            known = [v["version"] for v in ds.versions()]
            if version not in known:
                raise StoreError(
                    f"store {self.path} has no version {version} (versions {known[0]}..{known[-1]})"
                )
            return version
        tags = ds.tags.list()
        if version not in tags:
            shown = ", ".join(sorted(tags)) or "none"
            raise StoreError(f"store {self.path} has no tag {version!r} (tags: {shown})")
        return int(tags[version]["version"])

    def dataset(self, version: int | str | None = None):
        """The ``lance.LanceDataset`` at a version (for torch/ray readers that stream it)."""
        self._require()
        return self._open(self.resolve(version))

    def schema(self, version: int | str | None = None) -> pa.Schema:
        return self.dataset(version).schema

    def read(self, version: int | str | None = None, columns: list[str] | None = None) -> pa.Table:
        """All rows of a version (latest by default) as an Arrow table, optionally some columns."""
        ds = self.dataset(version)
        if columns is not None:
            missing = [c for c in columns if c not in ds.schema.names]
            if missing:
                raise StoreError(f"version {ds.version} has no column(s) {missing}")
        return ds.to_table(columns=columns)

    # ---- committing ----------------------------------------------------------------------------

    def _commit_loop(self, what: str, attempt: Callable[[object], int]) -> int:
        """Run ``attempt(latest_dataset_or_None)`` until it commits; retry only retryable conflicts."""
        last: BaseException | None = None
        for i in range(MAX_COMMIT_TRIES):
            try:
                return attempt(self._open())
            except _CreateRace as e:
                last = e
            except OSError as e:
                if not _is_retryable(e):
                    raise
                last = e
            time.sleep(min(0.5, 0.005 * 2 ** min(i, 7)) * (0.5 + random.random()))
        raise StoreError(f"{what}: gave up after {MAX_COMMIT_TRIES} commit conflicts ({last})")

    def _properties(self, lineage: Lineage | None, message: str, **filled) -> dict[str, str]:
        lineage = lineage or Lineage()
        if lineage.parent_version is not None and "parent_version" in filled:
            # The caller derived its data from an older version: keep that as the parent and
            # record the version the commit was actually built on.
            read_version = filled.pop("parent_version")
            if read_version != lineage.parent_version:
                filled["extra"] = {**filled.get("extra", lineage.extra), "read_version": read_version}
        lin = replace(
            lineage,
            message=message,
            schema_version=SCHEMA_VERSION,
            created_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            **filled,
        )
        return {LINEAGE_KEY: lin.to_json(), MESSAGE_KEY: message}

    # ---- write ---------------------------------------------------------------------------------

    def write(
        self,
        table: pa.Table,
        message: str = "",
        lineage: Lineage | None = None,
        *,
        where: Where | None = None,
    ) -> int:
        """Append rows; returns the new version.

        ``table`` holds ROLLOUT_SCHEMA columns (any subset that includes the required ones; the
        others are filled with nulls) plus any columns the store gained through ``add_columns``.
        Types must match the schema (widening int->float and string widths are accepted; nothing is
        guessed). Refused, with row and column named, and nothing written: unknown or missing
        columns, wrong types, nulls in required columns, duplicate or already-stored rollout_ids,
        spans whose ``response[start:end] != text`` or whose label/source is not allowed.
        """
        import lance

        where = where or Where()
        if table.num_rows == 0:
            raise DataError(f"{where.source}: no rows to write")

        def attempt(ds) -> int:
            target = ROLLOUT_SCHEMA if ds is None else ds.schema
            tbl = conform_table(table, target, where, required=REQUIRED_COLUMNS)
            ids = tbl.column("rollout_id").chunk(0)
            check_unique(ids, where, tbl)
            check_spans(tbl.column("spans").chunk(0), tbl.column("response").chunk(0), where, tbl)
            rows_before = 0
            if ds is not None:
                rows_before = ds.count_rows()
                stored = ds.to_table(columns=["rollout_id"]).column("rollout_id")
                clash = pc.is_in(ids, value_set=stored.combine_chunks() if stored.num_chunks != 1 else stored.chunk(0))
                if pc.any(clash).as_py():
                    i = int(np.flatnonzero(clash.to_numpy(zero_copy_only=False))[0])
                    raise DataError(
                        f"{where.row(i)}: column 'rollout_id': {ids[i].as_py()!r} is already in the "
                        f"store (version {ds.version}): a rollout is added once; its annotations change through "
                        f"`spanroute annotate`, `skills extract` or `ls pull` (from Python: Store.update)"
                    )
            props = self._properties(
                lineage,
                message,
                operation="write",
                parent_version=None if ds is None else ds.version,
                rows_written=tbl.num_rows,
                rows_before=rows_before,
            )
            if ds is None:
                return self._create(tbl, props)
            txn = lance.fragment.write_fragments(tbl, ds, schema=ds.schema, return_transaction=True)
            txn.transaction_properties = props
            return lance.LanceDataset.commit(self.uri, txn).version

        return self._commit_loop("write", attempt)

    def import_(
        self,
        src: str | Path,
        mapping: dict[str, str | None] | None = None,
        message: str = "",
        lineage: Lineage | None = None,
        *,
        correct_above: float = 0.0,
    ) -> int:
        """Append the rows of a JSONL / Parquet / HF datasets source (see ``datastore.io``);
        ``mapping`` renames source columns (``{"src": "dst"}``) or drops them (``{"src": None}``).
        Missing ids and ``correct`` are derived (``datastore.io.derive_missing``, with
        `correct_above`); the lines saying what was derived go to the lineage as ``derived``."""
        from datastore.io import derive_missing, read_source

        ds = self._open()
        target = ROLLOUT_SCHEMA if ds is None else ds.schema
        table, where = read_source(src, target, mapping)
        table, derived = derive_missing(table, correct_above=correct_above)
        lin = lineage or Lineage(stage="import")
        lin = replace(lin, extra={**lin.extra, "source": str(src), "mapping": mapping or {}, "derived": derived})
        return self.write(table, message or f"import {src}", lin, where=where)

    def _create(self, tbl: pa.Table, props: dict[str, str]) -> int:
        """Commit version 1. Lance would rebase a losing Overwrite on top of the winner (replacing
        its rows), so the create commit gets no retries: the loser of a create race fails here and
        the commit loop appends instead."""
        import lance
        from lance.dataset import LanceOperation, Transaction

        self.path.mkdir(parents=True, exist_ok=True)
        try:
            frags = lance.fragment.write_fragments(tbl, self.uri, schema=tbl.schema, mode="create")
            txn = Transaction(read_version=0, operation=LanceOperation.Overwrite(tbl.schema, frags),
                              transaction_properties=props)
            return lance.LanceDataset.commit(self.uri, txn, max_retries=0).version
        except OSError as e:
            if self._open() is not None:
                raise _CreateRace(str(e)) from e
            raise

    # ---- update --------------------------------------------------------------------------------

    def update(self, table: pa.Table, message: str = "", lineage: Lineage | None = None) -> int:
        """Set columns on existing rows, keyed by ``rollout_id``; returns the new version.

        ``table`` = ``rollout_id`` + existing non-sample columns (spans, error_type, annotation,
        skill, reward, ...). Rows not in ``table`` keep their values. One new version; the token
        columns' data files are never read or rewritten (Lance ``merge_insert`` in
        ``rewrite_columns`` mode attaches new data files holding only the updated columns).
        """
        import lance

        where = Where("update table")
        self._check_keyed(table, where, "update")

        def attempt(ds) -> int:
            if ds is None:
                raise StoreError(f"store {self.path} is empty: nothing to update")
            cols = [c for c in table.column_names if c != "rollout_id"]
            for c in cols:
                if c in IMMUTABLE_COLUMNS:
                    raise DataError(
                        f"update table: column '{c}' is part of the sample and cannot be updated "
                        f"(write a new rollout instead)"
                    )
                if c not in ds.schema.names:
                    raise DataError(
                        f"update table: column '{c}' is not in the store; add it first with Store.add_columns"
                    )
            sub = pa.schema([ds.schema.field("rollout_id")] + [ds.schema.field(c) for c in cols])
            tbl = conform_table(table, sub, where, required=("rollout_id",))
            idx = self._index_existing(ds, tbl, where, "update")
            if lineage is not None and lineage.parent_version is not None:
                self._refuse_lost_update(ds, tbl, cols, lineage.parent_version)
            if "spans" in cols:
                responses = ds.take(idx.to_numpy(zero_copy_only=False), columns=["response"]).column("response")
                check_spans(tbl.column("spans").chunk(0), responses.combine_chunks(), where, tbl)
            builder = (
                ds.merge_insert("rollout_id").when_matched_update_all().write_mode("rewrite_columns")
            )
            txn, _stats = builder.execute_uncommitted(tbl)
            txn.transaction_properties = self._properties(
                lineage,
                message,
                operation="update",
                parent_version=ds.version,
                rows_written=tbl.num_rows,
                rows_before=ds.count_rows(),
                extra={**(lineage.extra if lineage else {}), "columns": cols},
            )
            return lance.LanceDataset.commit(self.uri, txn).version

        return self._commit_loop("update", attempt)

    # ---- add_columns ---------------------------------------------------------------------------

    def add_columns(self, table: pa.Table, message: str = "", lineage: Lineage | None = None) -> int:
        """Add brand-new columns keyed by ``rollout_id``; rows not in ``table`` get nulls.

        A column named in ROLLOUT_SCHEMA takes its declared type; any other column keeps the
        explicit Arrow type the caller gave it (a null-typed column is refused: give it a type).
        Only new data files holding the new columns are written; existing files are untouched.
        """
        import lance
        from lance.dataset import LanceOperation, Transaction

        where = Where("add_columns table")
        self._check_keyed(table, where, "add_columns")
        for f in table.schema:
            if pa.types.is_null(f.type):
                raise DataError(f"add_columns table: column '{f.name}' has type null; give it an explicit type")

        def attempt(ds) -> int:
            if ds is None:
                raise StoreError(f"store {self.path} is empty: add columns after the first write")
            cols = [c for c in table.column_names if c != "rollout_id"]
            present = [c for c in cols if c in ds.schema.names]
            if present:
                raise DataError(
                    f"add_columns table: column(s) {present} already exist; set them with Store.update instead"
                )
            fields = [ds.schema.field("rollout_id")]
            for c in cols:
                declared = ROLLOUT_SCHEMA.field(c).type if c in ROLLOUT_SCHEMA.names else table.schema.field(c).type
                meta = {"spanroute.added_by": json.dumps({"stage": (lineage or Lineage()).stage, "message": message})}
                fields.append(pa.field(c, declared, nullable=True, metadata=meta))
            tbl = conform_table(table, pa.schema(fields), where, required=("rollout_id",))
            self._index_existing(ds, tbl, where, "add_columns")
            merged, schema = [], None
            for frag in ds.get_fragments():
                meta, schema = frag.merge(tbl, "rollout_id")
                merged.append(meta)
            txn = Transaction(
                read_version=ds.version,
                operation=LanceOperation.Merge(merged, schema),
                transaction_properties=self._properties(
                    lineage,
                    message,
                    operation="add_columns",
                    parent_version=ds.version,
                    rows_written=tbl.num_rows,
                    rows_before=ds.count_rows(),
                    extra={**(lineage.extra if lineage else {}), "columns": cols},
                ),
            )
            return lance.LanceDataset.commit(self.uri, txn).version

        return self._commit_loop("add_columns", attempt)

    def _refuse_lost_update(self, ds, tbl: pa.Table, cols: list[str], base: int) -> None:
        """Optimistic check for read-modify-write callers (``lineage.parent_version`` = the version
        they read): refuse if any updated cell of these rows changed after ``base``, instead of
        silently overwriting another annotator's work."""
        from datastore.diff import rows_equal

        if base == ds.version:
            return
        old = self._open(self.resolve(base))
        old_ids = old.to_table(columns=["rollout_id"]).column("rollout_id").combine_chunks()
        ids = tbl.column("rollout_id").chunk(0)
        in_old = pc.index_in(ids, value_set=old_ids)
        keep = pc.is_valid(in_old)
        if not pc.any(keep).as_py():
            return
        new_ids = ds.to_table(columns=["rollout_id"]).column("rollout_id").combine_chunks()
        at_old = pc.filter(in_old, keep).to_numpy(zero_copy_only=False)
        at_new = pc.index_in(pc.filter(ids, keep), value_set=new_ids).to_numpy(zero_copy_only=False)
        for c in cols:
            if c not in old.schema.names:
                continue
            a = old.take(at_old, columns=[c]).column(c).combine_chunks()
            b = ds.take(at_new, columns=[c]).column(c).combine_chunks()
            eq = rows_equal(a, b)
            if not eq.all():
                rid = pc.filter(ids, keep)[int(np.flatnonzero(~eq)[0])].as_py()
                raise StoreError(
                    f"update based on version {base} would overwrite a later change: column '{c}' "
                    f"of rollout_id={rid!r} changed between version {base} and {ds.version}; "
                    f"nothing was written: rerun the command, which reads the latest version ({ds.version}) "
                    f"(from Python: read version {ds.version} and call Store.update again)"
                )

    @staticmethod
    def _check_keyed(table: pa.Table, where: Where, what: str) -> None:
        if "rollout_id" not in table.column_names:
            raise DataError(f"{where.source}: missing required column 'rollout_id' (the key of {what})")
        if table.num_columns < 2:
            raise DataError(f"{where.source}: {what} needs rollout_id plus at least one column")
        if table.num_rows == 0:
            raise DataError(f"{where.source}: no rows")

    @staticmethod
    def _index_existing(ds, tbl: pa.Table, where: Where, what: str) -> pa.Array:
        """Row positions (in ``ds``) of ``tbl``'s rollout_ids; refuses duplicates and unknown ids."""
        ids = tbl.column("rollout_id").chunk(0)
        check_unique(ids, where, tbl)
        stored = ds.to_table(columns=["rollout_id"]).column("rollout_id")
        idx = pc.index_in(ids, value_set=stored.combine_chunks() if stored.num_chunks != 1 else stored.chunk(0))
        if idx.null_count:
            i = int(np.flatnonzero(idx.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{where.row(i)}: column 'rollout_id': {ids[i].as_py()!r} is not in the store "
                f"(version {ds.version}); {what} only touches existing rows"
            )
        return idx

    # ---- history -------------------------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first, with message, lineage, tags and row count."""
        ds = self._open()
        if ds is None:
            return []
        tags = self._tags_by_version(ds)
        return [self._info(ds, v, tags) for v in ds.versions()]

    def version_info(self, version: int | str | None = None) -> VersionInfo:
        """One version's message, lineage, tags and row count."""
        ds = self._require()
        n = self.resolve(version)
        v = next(v for v in ds.versions() if int(v["version"]) == n)
        return self._info(ds, v, self._tags_by_version(ds))

    @staticmethod
    def _tags_by_version(ds) -> dict[int, list[str]]:
        by_version: dict[int, list[str]] = {}
        for name, t in ds.tags.list().items():
            by_version.setdefault(int(t["version"]), []).append(name)
        return by_version

    @staticmethod
    def _info(ds, v: dict, tags: dict[int, list[str]]) -> VersionInfo:
        n = int(v["version"])
        txn = ds.read_transaction(n)
        props = (txn.transaction_properties or {}) if txn is not None else {}
        lineage = lineage_from_properties(props)
        return VersionInfo(
            version=n,
            timestamp=v["timestamp"],
            message=props.get(MESSAGE_KEY, lineage.get("message", "")),
            lineage=lineage,
            tags=tuple(sorted(tags.get(n, []))),
            rows=int(v["metadata"].get("total_rows", -1)),
        )

    def tag(self, name: str, version: int | str | None = None, metadata: dict | None = None) -> int:
        """Name a version (latest by default); ``metadata`` (str -> str) travels with the tag.
        Tag names are ``[A-Za-z0-9._-]+`` (e.g. ``gen-run3``, ``ann-api-0001``). Returns the version."""
        if not TAG_RE.match(name or ""):
            raise StoreError(
                f"bad tag name {name!r}: use only letters, digits, '.', '_' and '-' (e.g. gen-run3)"
            )
        ds = self._require()
        v = self.resolve(version)
        if name in ds.tags.list():
            raise StoreError(f"tag {name!r} already exists (on version {ds.tags.get_version(name)})")
        ds.tags.create(name, v)
        if metadata:
            ds.tags.replace_metadata(name, {str(k): str(val) for k, val in metadata.items()})
        return v

    def tags(self) -> dict[str, dict]:
        """Tag name -> {version, created_at, metadata}."""
        ds = self._open()
        if ds is None:
            return {}
        return {
            k: {"version": int(t["version"]), "created_at": t["created_at"], "metadata": dict(t["metadata"] or {})}
            for k, t in ds.tags.list().items()
        }

    def diff(self, a: int | str, b: int | str) -> Diff:
        """Rows added, removed and changed (by rollout_id, with the changed columns) from a to b."""
        va, vb = self.resolve(a), self.resolve(b)
        return diff_tables(self.read(va), self.read(vb), va, vb)

    def verify(self, version: int | str | None = None) -> VerifyReport:
        """Check a version: schema, spans (``response[start:end] == text``, labels, sources),
        unique rollout_id, each group within one prompt. Returns the report (``.ok``, ``.problems``)."""
        ds = self.dataset(version)
        return verify_table(ds, ds.version)

    # ---- export --------------------------------------------------------------------------------

    def fingerprint(self, version: int | str | None = None) -> str:
        """A stable id of (store, version), used as the HF datasets fingerprint."""
        ds = self.dataset(version)
        stamp = ds.get_version()["timestamp"]
        key = f"{Path(self.uri).resolve()}|{ds.version}|{stamp}"
        return "spanroute-" + hashlib.sha256(key.encode()).hexdigest()[:16]

    def to_hf(self, version: int | str | None = None):
        """The version as an in-memory ``datasets.Dataset`` (with a fingerprint, so HF does not
        spend seconds hashing the table): `sampling` and `skill` as nested features, and a
        ``DatasetInfo`` holding a description, the version and the lineage (``datastore.hf``)."""
        import datasets

        from datastore.hf import dataset_info, hf_table

        v = self.resolve(version)
        return datasets.Dataset(hf_table(self.read(v)), info=dataset_info(self, v), fingerprint=self.fingerprint(v))

    def export(self, version: int | str | None, to: str | Path, format: str) -> Path:
        """Write a version to ``to`` as ``hf`` (save_to_disk dir), ``parquet`` or ``jsonl``."""
        from datastore.io import export_table

        v = self.resolve(version)
        hf = self.to_hf(v) if format == "hf" else None
        return export_table(self.read(v) if hf is None else None, Path(to), format, hf=hf)


class _CreateRace(Exception):
    """Another writer created the dataset between our check and our create."""
