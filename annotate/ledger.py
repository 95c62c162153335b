"""One budget and one stop flag per annotation job, shared by every process that works on it.

A job (one `ApiAnnotator`, whatever executor runs its batches) has an id; its row in the
``jobs`` table of the request cache's SQLite file holds the `--max-cost` cap, the spend so far,
and the reason the job stopped, if it did. Every engine run of the job (the one local call, or
each Ray batch in any actor on the node) reserves a request's expected cost here before sending
it and settles the real cost after, so N batches share one budget instead of N budgets. A fatal
fault seen by one batch (bad key, no quota, unknown model) is written here, and every other batch
stops at its next chunk.

Reservations are keyed by (job, request hash): a batch re-run after its actor was killed reserves
the same keys again, replacing the dead actor's reservations instead of adding to them; each run
releases what it reserved and did not settle when it ends.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from annotate.journal import immediate

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (job TEXT PRIMARY KEY, cap REAL, spent REAL NOT NULL DEFAULT 0,
    answered INTEGER NOT NULL DEFAULT 0, stopped TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS reservations (job TEXT NOT NULL, key TEXT NOT NULL, est REAL NOT NULL,
    PRIMARY KEY (job, key));
"""


class Ledger:
    """The job's row in the shared SQLite file. Sync calls, a few per request; use from one thread."""

    def __init__(self, path: str | Path, job: str, cap: float | None):
        self.job, self.cap = job, cap
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO jobs(job, cap, updated) VALUES(?, ?, ?)", (job, cap, time.time()))

    def close(self) -> None:
        self._db.close()

    def _tx(self):
        return immediate(self._db)

    # -- budget -----------------------------------------------------------------------------
    def mean_cost(self) -> float | None:
        """The job's mean cost per paid answer so far (None before the first)."""
        spent, answered = self._db.execute("SELECT spent, answered FROM jobs WHERE job=?", (self.job,)).fetchone()
        return spent / answered if answered else None

    def reserve(self, key: str, est: float) -> str:
        """``ok`` (reserved: send it), ``wait`` (the budget is taken by requests in flight, in
        this or another process: their real costs may free some) or ``stop`` (spend + reserved +
        `est` would pass the cap with nothing in flight, or the job was stopped)."""
        with self._tx():
            spent, stopped = self._db.execute("SELECT spent, stopped FROM jobs WHERE job=?", (self.job,)).fetchone()
            if stopped:
                return "stop"
            (held,) = self._db.execute("SELECT COALESCE(SUM(est), 0) FROM reservations WHERE job=? AND key != ?",
                                       (self.job, key)).fetchone()
            if self.cap is None or spent + held + est <= self.cap:
                self._db.execute("INSERT OR REPLACE INTO reservations VALUES(?, ?, ?)", (self.job, key, est))
                return "ok"
            if held > 0:
                return "wait"
            self._db.execute("UPDATE jobs SET stopped='max-cost', updated=? WHERE job=? AND stopped IS NULL",
                             (time.time(), self.job))
            return "stop"

    def settle(self, key: str, cost: float, paid: bool) -> None:
        """Replace the key's reservation by its real cost (`paid`: an answer that counts for the mean)."""
        with self._tx():
            self._db.execute("DELETE FROM reservations WHERE job=? AND key=?", (self.job, key))
            self._db.execute("UPDATE jobs SET spent = spent + ?, answered = answered + ?, updated=? WHERE job=?",
                             (cost, int(paid), time.time(), self.job))

    def release(self, keys) -> None:
        """Drop reservations of requests that were never answered (stopped, or a fatal fault)."""
        keys = list(keys)
        if keys:
            with self._tx():
                self._db.executemany("DELETE FROM reservations WHERE job=? AND key=?", [(self.job, k) for k in keys])

    def spent(self) -> float:
        return self._db.execute("SELECT spent FROM jobs WHERE job=?", (self.job,)).fetchone()[0]

    # -- stop flag --------------------------------------------------------------------------
    def stopped(self) -> str | None:
        """Why the job stopped (``max-cost``, or ``fatal: <cause>``), or None."""
        return self._db.execute("SELECT stopped FROM jobs WHERE job=?", (self.job,)).fetchone()[0]

    def stop(self, reason: str) -> None:
        """Stop the job for every process working on it (the first reason stays)."""
        with self._tx():
            self._db.execute("UPDATE jobs SET stopped=?, updated=? WHERE job=? AND stopped IS NULL",
                             (reason, time.time(), self.job))
