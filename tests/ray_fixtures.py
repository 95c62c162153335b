"""Fault injection for the Ray executor tests: an annotator wrapper that tells the test which
process (Ray actor) is annotating, so the test can SIGKILL it mid-job."""

from __future__ import annotations

import os
from pathlib import Path


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
