"""The persistent request cache and in-flight journal: one SQLite file, keyed on the request hash.

States of a key: ``inflight`` (journaled before the request is sent), ``done`` (the answer and its
usage are stored: a cache hit forever after) and ``failed`` (a permanent error; retried on the
next run). The journal never holds headers, so API keys cannot reach it.

Crash semantics (SIGKILL at any point): WAL mode with ``synchronous=NORMAL`` makes every commit
survive a process kill (not a power cut). In-flight marks are committed *before* their requests
leave; answers are committed in small batches (every `flush_s` or `flush_n` answers). An answer
that arrived but was not yet committed when the process died is lost; on resume its key is still
``inflight`` and is re-sent with the same ``Idempotency-Key`` header (the request hash). A server
that honours idempotency keys (the scripted test server does, as do many gateways) replays the
stored answer without charging; one that does not will answer - and bill - again. The resume
reports how many keys were marked in flight (`resent_after_crash`, an upper bound: marks are
committed a chunk ahead, so some were queued, not sent). The requests that can really be paid
twice are those sent and not yet committed: at most the concurrency plus one commit batch.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request TEXT,
    response TEXT,
    content TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL,
    error TEXT,
    attempts INTEGER DEFAULT 0,
    updated REAL
)
"""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One finished call as the cache holds it."""

    key: str
    state: str  # done | failed
    content: str | None  # the assistant message content (the model's answer text)
    response: str | None  # the raw response JSON as received
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    error: str | None
    attempts: int


class Journal:
    """SQLite request cache + in-flight journal. Use from one thread (the event loop)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._pending: list[tuple] = []

    def close(self) -> None:
        self.flush()
        self._db.close()

    # --- reads -------------------------------------------------------------------------------
    def lookup(self, keys: list[str]) -> dict[str, CallRecord]:
        """Finished (``done``) records for those keys."""
        out: dict[str, CallRecord] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = ",".join("?" * len(chunk))
            for row in self._db.execute(
                "SELECT key,state,content,response,prompt_tokens,completion_tokens,cost_usd,error,"
                f"attempts FROM calls WHERE state='done' AND key IN ({q})",
                chunk,
            ):
                out[row[0]] = CallRecord(row[0], row[1], row[2], row[3], row[4] or 0, row[5] or 0,
                                         row[6] or 0.0, row[7], row[8] or 0)
        return out

    def inflight(self) -> set[str]:
        """Keys journaled as sent whose answers were never stored (a previous run died)."""
        return {r[0] for r in self._db.execute("SELECT key FROM calls WHERE state='inflight'")}

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT state, COUNT(*) FROM calls GROUP BY state").fetchall())

    # --- writes ------------------------------------------------------------------------------
    def mark_inflight(self, items: list[tuple[str, str]]) -> None:
        """Journal (key, request JSON) pairs as in flight, committed before any of them is sent."""
        now = time.time()
        with self._tx():
            self._db.executemany(
                "INSERT INTO calls(key,state,request,updated) VALUES(?, 'inflight', ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state='inflight', updated=excluded.updated "
                "WHERE calls.state != 'done'",
                [(k, r, now) for k, r in items],
            )

    def record(self, rec: CallRecord) -> None:
        """Queue a finished call; committed at the next `flush`."""
        self._pending.append(
            (rec.state, rec.response, rec.content, rec.prompt_tokens, rec.completion_tokens,
             rec.cost_usd, rec.error, rec.attempts, time.time(), rec.key)
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        with self._tx():
            self._db.executemany(
                "UPDATE calls SET state=?, response=?, content=?, prompt_tokens=?, "
                "completion_tokens=?, cost_usd=?, error=?, attempts=?, updated=? "
                "WHERE key=? AND state != 'done'",
                rows,
            )

    def forget_unsent(self, keys: list[str]) -> None:
        """Drop in-flight marks of requests journaled but never sent (a clean budget stop)."""
        if not keys:
            return
        with self._tx():
            self._db.executemany("DELETE FROM calls WHERE key=? AND state='inflight'", [(k,) for k in keys])

    def _tx(self):
        return immediate(self._db)


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction on `db` (autocommit mode): committed, or rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def canonical(obj: dict) -> str:
    """The one JSON serialisation hashed and journaled (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

