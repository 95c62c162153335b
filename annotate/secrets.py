"""Keep secrets (API keys, tokens, passwords) out of logs, stores and exception messages."""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
_MIN_LEN = 8  # shorter values are too likely to collide with ordinary text


def secret_values(extra: tuple[str, ...] = ()) -> list[str]:
    """Values of environment variables whose names look secret, plus `extra`, longest first."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_LEN}
    values.update(v for v in extra if v and len(v) >= _MIN_LEN)
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """`text` with every known secret value replaced by ``***``."""
    for value in secret_values(extra):
        text = text.replace(value, "***")
    return text
