"""Helpers for the Ray executor tests: a toy store, the CLI arguments of an api job against the
scripted server, the annotated columns to compare, and fault injection (an annotator wrapper that
tells the test which process - which Ray actor - is annotating, so the test can SIGKILL it)."""

from __future__ import annotations

import os
from pathlib import Path


from annotate_fixtures import annotated, api_args, make_store  # noqa: F401 - re-exported for the Ray tests


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
