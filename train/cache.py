"""Where spanroute caches what it builds (the toy policy, converted SmolLM2 weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$SPANROUTE_CACHE`, else `~/.cache/spanroute`."""
    return Path(os.environ.get("SPANROUTE_CACHE") or Path.home() / ".cache" / "spanroute")
