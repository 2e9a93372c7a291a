"""Studies: a grid of jobs (students × teachers × methods × seeds × hyperparameters), one results store.

Every job is a JSON-serialisable config; its key is the hash of that config, so a re-run skips
what is done and an interrupted study resumes with only the missing jobs. Jobs run through a
backend: ``local`` (a process pool over the machine's cores) or ``ray`` (the same jobs as Ray
tasks, for a cluster). Both write the same rows to the same SQLite table.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash

log = logging.getLogger(__name__)
JobConfig = dict[str, Any]
JobFn = Callable[[JobConfig], dict[str, Any]]


def job_key(config: JobConfig) -> str:
    return stable_hash(config, length=20)


def expand_grid(base: JobConfig, axes: dict[str, Sequence[Any]], skip: Callable[[JobConfig], bool] | None = None
                ) -> list[JobConfig]:
    """The cartesian product of ``axes`` on top of ``base`` (axes order = iteration order)."""
    names = list(axes)
    jobs = []
    for values in itertools.product(*(axes[n] for n in names)):
        job = {**base, **dict(zip(names, values))}
        if skip is None or not skip(job):
            jobs.append(job)
    return jobs


@dataclass(frozen=True)
class ResultRow:
    key: str
    config: JobConfig
    metrics: dict[str, Any]
    status: str
    seconds: float


class ResultsStore:
    """SQLite table ``results(key, config, metrics, status, seconds, finished)``; safe across processes
    (each write is one short transaction; readers never see half a row)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, config TEXT NOT NULL, "
                       "metrics TEXT, status TEXT NOT NULL, seconds REAL, finished REAL)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    def done_keys(self) -> set[str]:
        with self._connect() as db:
            return {k for (k,) in db.execute("SELECT key FROM results WHERE status = 'done'")}

    def put(self, config: JobConfig, metrics: dict[str, Any], status: str, seconds: float) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                       (job_key(config), json.dumps(config, sort_keys=True), json.dumps(metrics), status, seconds,
                        time.time()))

    def rows(self, status: str | None = "done") -> list[ResultRow]:
        query = "SELECT key, config, metrics, status, seconds FROM results"
        with self._connect() as db:
            found = db.execute(query + (" WHERE status = ?" if status else "") + " ORDER BY key",
                               (status,) if status else ()).fetchall()
        return [ResultRow(k, json.loads(c), json.loads(m or "{}"), s, sec) for k, c, m, s, sec in found]

    def records(self, status: str | None = "done") -> list[dict[str, Any]]:
        """Flat dicts (config fields, then metrics), for tables and plots."""
        return [{**r.config, **r.metrics, "status": r.status, "seconds": r.seconds} for r in self.rows(status)]


def _run_one(fn: JobFn, config: JobConfig) -> tuple[JobConfig, dict[str, Any], str, float]:
    start = time.perf_counter()
    try:
        metrics, status = fn(config), "done"
    except Exception as exc:  # a failed job is recorded, not fatal for the study
        metrics, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, "failed"
    return config, metrics, status, time.perf_counter() - start


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class LocalBackend:
    """Runs jobs in ``workers`` processes (or inline with ``workers=1``), ``threads`` torch threads each."""

    def __init__(self, workers: int = 1, threads: int | None = None):
        self.workers = max(1, workers)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, fn: JobFn, jobs: Sequence[JobConfig]) -> Iterator[tuple[JobConfig, dict[str, Any], str, float]]:
        if self.workers == 1:
            _init_worker(self.threads)
            for job in jobs:
                yield _run_one(fn, job)
            return
        with ProcessPoolExecutor(self.workers, initializer=_init_worker, initargs=(self.threads,)) as pool:
            pending: set[Future] = {pool.submit(_run_one, fn, job) for job in jobs}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()


class RayBackend:
    """Runs every job as a Ray task (``num_cpus`` each) on an existing cluster (``address``) or a local
    Ray instance; results stream back as tasks finish."""

    def __init__(self, address: str | None = None, num_cpus_per_job: float = 1, threads: int = 1,
                 local_cpus: int | None = None):
        self.address, self.num_cpus_per_job, self.threads, self.local_cpus = address, num_cpus_per_job, threads, local_cpus

    def run(self, fn: JobFn, jobs: Sequence[JobConfig]) -> Iterator[tuple[JobConfig, dict[str, Any], str, float]]:
        try:
            import ray
            from ray._private import ray_constants
        except ImportError as exc:
            raise GktError("the ray backend needs Ray: install gkt with the 'cluster' extra "
                           "(uv sync --extra cluster, or pip install 'ray[default]')") from exc
        # Under `uv run`, Ray's uv hook would run every worker as `uv run ... python` inside a copy of the
        # working directory: with `--no-sync` that is an empty new venv without Ray (the workers never
        # start), without it a fresh environment per node (slow, and impossible offline). The workers run
        # the driver's own interpreter instead, unless RAY_ENABLE_UV_RUN_RUNTIME_ENV asks for the hook.
        # Ray reads that variable once, when it is first imported, so the flag is also set on the module.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"].lower() in ("1", "true")
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, num_cpus=None if self.address else self.local_cpus,
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        threads = self.threads

        @ray.remote(num_cpus=self.num_cpus_per_job)
        def remote_job(config: JobConfig) -> tuple[JobConfig, dict[str, Any], str, float]:
            _init_worker(threads)
            return _run_one(fn, config)

        try:
            pending = [remote_job.remote(job) for job in jobs]
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                yield ray.get(finished[0])
        finally:
            if started_here:
                ray.shutdown()


def run_study(fn: JobFn, jobs: Iterable[JobConfig], store: ResultsStore, backend: LocalBackend | RayBackend,
              retry_failed: bool = False, desc: str = "study",
              on_result: Callable[[JobConfig, dict[str, Any], str], None] | None = None) -> dict[str, int]:
    """Run the jobs of ``jobs`` whose key is not done in ``store``; returns counts of what happened.
    ``on_result(config, metrics, status)`` sees every job as it is stored (e.g. for experiment trackers)."""
    jobs = list(jobs)
    keys = [job_key(j) for j in jobs]
    if len(set(keys)) != len(keys):
        raise GktError("the study grid contains duplicate jobs")
    done = store.done_keys()
    failed_before = {r.key for r in store.rows("failed")}
    todo = [j for j, k in zip(jobs, keys) if k not in done and (retry_failed or k not in failed_before)]
    counts = {"total": len(jobs), "skipped": len(jobs) - len(todo), "done": 0, "failed": 0}
    log.info("%s: %d jobs, %d already in the store, %d to run", desc, len(jobs), counts["skipped"], len(todo))
    for config, metrics, status, seconds in tqdm(backend.run(fn, todo), total=len(todo), desc=desc, disable=None):
        store.put(config, metrics, status, seconds)
        counts[status] += 1
        if on_result is not None:
            on_result(config, metrics, status)
        if status == "failed":
            log.warning("job failed: %s: %s", config, metrics.get("error"))
    return counts


STORE_NAME = "results.sqlite"  # a study's results store inside its run directory


