"""Helpers for the Ray executor tests: a toy store, the CLI arguments of an api job against the
scripted server, the annotated columns to compare, and fault injection (an annotator wrapper that
tells the test which process - which Ray actor - is annotating, so the test can SIGKILL it)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from annotate_fixtures import toy_records
from datastore import Lineage, Store
from datastore.schema import ROLLOUT_SCHEMA


def make_store(path: Path, n: int, seed: int = 0) -> Store:
    """A store whose version 1 holds `n` toy rollouts (about half incorrect)."""
    names = {f.name for f in ROLLOUT_SCHEMA}
    rows = [{k: v for k, v in r.items() if k in names} for r in toy_records(n, seed=seed)]
    st = Store(path)
    st.write(pa.Table.from_pylist(rows), message="toy rollouts", lineage=Lineage(stage="generate", model="toy"))
    return st


def annotated(st: Store) -> list[dict]:
    """The columns an annotation job writes, sorted by rollout_id."""
    rows = st.read(columns=["rollout_id", "spans", "error_type", "annotation"]).to_pylist()
    return sorted(rows, key=lambda r: r["rollout_id"])


def api_args(store: Path, url: str, *extra: str) -> list[str]:
    return ["annotate", "api", "--store", str(store), "--base-url", url, "--model", "scripted",
            "--price-in", "1", "--price-out", "2", "--concurrency", "8", "--timeout", "5", "--no-progress", *extra]


class PidReporting:
    """Delegates to `inner`; before each batch writes this process's pid to `pid_dir/<pid>`."""

    def __init__(self, inner, pid_dir: str):
        self.inner = inner
        self.pid_dir = pid_dir
        self.provenance = inner.provenance

    @property
    def summary(self):
        return getattr(self.inner, "summary", None)

    def annotate(self, records: list[dict]):
        Path(self.pid_dir, str(os.getpid())).touch()
        return self.inner.annotate(records)
