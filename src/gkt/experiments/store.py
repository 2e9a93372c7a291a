"""A study's results store: one SQLite table of jobs, their results and who is running them.

A row is ``running`` while a process holds the job (its *claim*: owner + heartbeat), then ``done`` or
``failed``. Claims make the store safe for several processes at once: a job is claimed in one
transaction, so two studies on one store never run it twice; a claim whose owner died (its process is
gone, or its heartbeat is older than ``stale_after`` seconds) is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash

JobConfig = dict[str, Any]
ClaimState = Literal["claimed", "done", "failed", "busy"]
COLUMNS = ("key", "config", "metrics", "status", "seconds", "finished", "owner", "heartbeat")


def job_key(config: JobConfig) -> str:
    return stable_hash(config, length=20)


@dataclass(frozen=True)
class ResultRow:
    key: str
    config: JobConfig
    metrics: dict[str, Any]
    status: str
    seconds: float


def new_owner() -> str:
    """``HOST:PID:TOKEN``: who holds a claim (the token tells apart two stores opened by one process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process of ``owner`` runs (None: it runs on another host, so only its heartbeat tells)."""
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


class ResultsStore:
    """SQLite table ``results(key, config, metrics, status, seconds, finished, owner, heartbeat)``; safe
    across processes (each write is one short transaction; readers never see half a row). A file that is
    not a readable store raises :class:`GktError` naming it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, config TEXT NOT NULL, "
                       "metrics TEXT, status TEXT NOT NULL, seconds REAL, finished REAL, owner TEXT, heartbeat REAL)")
            have = {row[1] for row in db.execute("PRAGMA table_info(results)")}
            for column in ("owner", "heartbeat"):  # stores written before claims existed
                if column not in have:
                    db.execute(f"ALTER TABLE results ADD COLUMN {column} {'TEXT' if column == 'owner' else 'REAL'}")

    @contextmanager
    def _connect(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            raise GktError(f"{self.path} is not a readable results store ({exc}); move it away and run the study "
                           "again (without --resume to start a new store)") from exc

    def done_keys(self) -> set[str]:
        with self._connect() as db:
            return {k for (k,) in db.execute("SELECT key FROM results WHERE status = 'done'")}

    def put(self, config: JobConfig, metrics: dict[str, Any], status: str, seconds: float) -> None:
        """Record a finished job (``done`` or ``failed``); its claim ends."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                       (job_key(config), json.dumps(config, sort_keys=True), json.dumps(metrics), status, seconds,
                        time.time()))

    def forget(self, keys: list[str]) -> None:
        """Drop the finished rows of ``keys`` (e.g. jobs whose outputs were deleted: they run again); a job
        another process is running keeps its claim."""
        with self._connect() as db:
            db.executemany("DELETE FROM results WHERE key = ? AND status != 'running'", [(k,) for k in keys])

    def rows(self, status: str | None = "done") -> list[ResultRow]:
        query = "SELECT key, config, metrics, status, seconds FROM results"
        with self._connect() as db:
            found = db.execute(query + (" WHERE status = ?" if status else "") + " ORDER BY key",
                               (status,) if status else ()).fetchall()
        rows = []
        for key, config, metrics, row_status, seconds in found:
            try:
                rows.append(ResultRow(key, json.loads(config), json.loads(metrics or "{}"), row_status, seconds))
            except (json.JSONDecodeError, TypeError) as exc:
                raise GktError(f"{self.path}: the row of job {key} is not valid JSON ({exc}); the store is damaged: "
                               "move it away and run the study again") from exc
        return rows

    def records(self, status: str | None = "done", keys: set[str] | None = None) -> list[dict[str, Any]]:
        """Flat dicts (config fields, then metrics), for tables and plots; only the jobs of ``keys`` if given."""
        return [{**r.config, **r.metrics, "status": r.status, "seconds": r.seconds} for r in self.rows(status)
                if keys is None or r.key in keys]

    # claims

    def claim(self, config: JobConfig, owner: str, retry_failed: bool = False, stale_after: float = 60.0
              ) -> ClaimState:
        """Try to take the job for ``owner``: ``claimed`` (run it now), ``done``, ``failed`` (and not to be
        retried) or ``busy`` (a live process holds it)."""
        key, now = job_key(config), time.time()
        with self._connect(immediate=True) as db:
            found = db.execute("SELECT status, owner, heartbeat FROM results WHERE key = ?", (key,)).fetchone()
            if found is not None:
                status, holder, heartbeat = found
                if status == "done" or (status == "failed" and not retry_failed):
                    return status
                if status == "running" and holder != owner and not _stale(holder, heartbeat, now, stale_after):
                    return "busy"
            db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, NULL, 'running', NULL, NULL, ?, ?)",
                       (key, json.dumps(config, sort_keys=True), owner, now))
        return "claimed"

    def heartbeat(self, owner: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE results SET heartbeat = ? WHERE owner = ? AND status = 'running'", (time.time(), owner))

    def release(self, owner: str) -> None:
        """Give up ``owner``'s unfinished claims (the jobs become free to run)."""
        with self._connect() as db:
            db.execute("DELETE FROM results WHERE owner = ? AND status = 'running'", (owner,))

    @contextmanager
    def claims(self, heartbeat_s: float = 10.0) -> Iterator[str]:
        """A new owner whose claims stay fresh (a heartbeat thread) until the block ends, then are released."""
        owner, stop = new_owner(), threading.Event()

        def beat() -> None:
            while not stop.wait(heartbeat_s):
                try:
                    self.heartbeat(owner)
                except GktError:  # a locked or vanished store: the next beat tries again
                    pass

        thread = threading.Thread(target=beat, name="gkt-study-heartbeat", daemon=True)
        thread.start()
        try:
            yield owner
        finally:
            stop.set()
            thread.join()
            self.release(owner)


def _stale(owner: str | None, heartbeat: float | None, now: float, stale_after: float) -> bool:
    if not owner or heartbeat is None:
        return True
    alive = owner_alive(owner)
    if alive is False:
        return True
    # A process seen running here (paused, or starved of CPU) keeps its claims ten times longer than one on
    # another host, where only its heartbeat tells; the limit remains for a reused process id.
    return now - heartbeat > (10 * stale_after if alive else stale_after)
