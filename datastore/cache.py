"""Where spanroute caches what it builds (the toy policy, converted SmolLM2 weights, Label Studio's
own venv), and building one cache entry once across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """`$SPANROUTE_CACHE`, else `~/.cache/spanroute`."""
    return Path(os.environ.get("SPANROUTE_CACHE") or Path.home() / ".cache" / "spanroute").expanduser()


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive inter-process lock on the file `path` (created with its folder if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(done: Callable[[], bool], lock: Path, build: Callable[[], None]) -> None:
    """Run `build` unless `done()`. The check is repeated under the exclusive `lock`, so of several
    processes (test sessions, builders) asking at once one builds and the others find it built.
    `build` must make `done()` true only once it has finished (a marker written last, or an atomic
    rename), so an interrupted build is redone by the next call."""
    if done():
        return
    with locked(lock):
        if not done():
            build()
