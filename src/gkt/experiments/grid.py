"""Studies: a grid of jobs, one results store, the one way gkt runs many runs.

Every job is a JSON-serialisable config run by a job function (config dict in, metrics dict out); its key
is the hash of that config, so a re-run skips what is done and an interrupted study resumes with only the
missing jobs. Jobs run through a backend (:mod:`gkt.experiments.backends`): ``local`` (inline or a process
pool over the machine's cores or GPUs) or ``ray`` (the same jobs as Ray tasks, for a cluster). Both write the
same rows to the same SQLite table (:mod:`gkt.experiments.store`), claiming each job first, so several
processes can work on one store without running a job twice.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from gkt.core.errors import GktError
from gkt.core.limits import MAX_JOBS, check_size
from gkt.experiments.backends import (
    JobConfig,
    JobFn,
    LocalBackend,
    RayBackend,
    note_skipped_quietly,
    ray_resources,
    visible_gpus,
    worker_gpus,
)
from gkt.experiments.store import ResultRow, ResultsStore, job_key

__all__ = ["STORE_NAME", "LocalBackend", "RayBackend", "ResultRow", "ResultsStore", "StudyCounts", "expand_grid",
           "failed_rows", "job_key", "local_backend", "ray_resources", "run_study", "visible_gpus", "worker_gpus"]
log = logging.getLogger(__name__)
STORE_NAME = "results.sqlite"  # a study's results store inside its run directory


def local_backend(workers: int, threads: int | None, device: Any) -> LocalBackend:
    """The local backend for a study on ``device`` (a ``torch.device``): on CUDA without a device index,
    ``workers`` processes spread over the visible GPUs, one each; otherwise every worker uses ``device``."""
    spread = device.type == "cuda" and device.index is None and workers > 1
    return LocalBackend(workers, threads, gpus=visible_gpus() if spread else ())


def expand_grid(base: JobConfig, axes: dict[str, Sequence[Any]], skip: Callable[[JobConfig], bool] | None = None
                ) -> list[JobConfig]:
    """The cartesian product of ``axes`` on top of ``base`` (axes order = iteration order); its size is
    checked before anything is expanded (:data:`~gkt.core.limits.MAX_JOBS`)."""
    names = list(axes)
    sizes = " x ".join(f"{len(axes[n])} {n}" for n in names)
    check_size(f"a grid of {sizes}", math.prod(len(axes[n]) for n in names), MAX_JOBS, "jobs",
               "give fewer values (--students, --teachers, --methods, --seeds, --grid)")
    jobs = []
    for values in itertools.product(*(axes[n] for n in names)):
        job = {**base, **dict(zip(names, values))}
        if skip is None or not skip(job):
            jobs.append(job)
    return jobs


@dataclass
class StudyCounts:
    """What a :func:`run_study` call did with its jobs. ``failed`` lists the keys that failed in this call,
    ``not_retried`` those that had failed before and were left alone (``retry_failed`` reruns them)."""

    total: int
    skipped: int = 0  # done before (or meanwhile by another process on the same store)
    done: int = 0
    failed: list[str] = field(default_factory=list)
    not_retried: list[str] = field(default_factory=list)
    skipped_images: dict[str, str] = field(default_factory=dict)  # left out by this call's jobs: source -> reason

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_retried

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "skipped": self.skipped, "done": self.done, "failed": len(self.failed),
                "not_retried": len(self.not_retried), "skipped_images": len(self.skipped_images)}

    def describe(self, noun: str = "jobs") -> str:
        text = (f"{self.total} {noun}: {self.skipped} already done, {self.done} ran, {len(self.failed)} failed")
        if self.not_retried:
            text += f", {len(self.not_retried)} failed before (not retried; --retry-failed reruns them)"
        if self.skipped_images:
            text += f"; {len(self.skipped_images)} unreadable image(s) left out (--bad-images skip)"
        return text


def run_study(fn: JobFn, jobs: Iterable[JobConfig], store: ResultsStore, backend: LocalBackend | RayBackend,
              retry_failed: bool = False, desc: str = "study",
              on_result: Callable[[JobConfig, dict[str, Any], str], None] | None = None,
              poll_s: float = 1.0, stale_after: float = 60.0) -> StudyCounts:
    """Run every job of ``jobs`` that is not done in ``store`` and return what happened.

    Each job is claimed in the store before it runs; a job another live process holds is waited for (and
    taken over when its owner dies: process gone, or no heartbeat for ``stale_after`` seconds). A job that
    failed before is not retried unless ``retry_failed``. ``on_result(config, metrics, status)`` sees every
    job this call ran, as it is stored (e.g. for experiment trackers)."""
    jobs = list(jobs)
    keys = [job_key(j) for j in jobs]
    if len(set(keys)) != len(keys):
        raise GktError("the study grid contains duplicate jobs")
    failed_before = {r.key for r in store.rows("failed")} & set(keys)
    counts = StudyCounts(len(jobs))
    queue = deque(zip(keys, jobs))
    log.info("%s: %d jobs", desc, len(jobs))
    with store.claims() as owner, backend.session(fn) as session, \
            tqdm(total=len(jobs), desc=desc, disable=None) as bar:
        running, waiting = 0, []
        while queue or waiting or running:
            while queue and running < session.capacity:
                key, job = queue.popleft()
                state = store.claim(job, owner, retry_failed and key in failed_before, stale_after)
                if state == "claimed":
                    session.submit(job)
                    running += 1
                elif state == "busy":
                    waiting.append((key, job))
                else:
                    counts.skipped += state == "done"
                    if state == "failed":
                        counts.not_retried.append(key)
                    bar.update()
            if running:
                finished = session.wait(poll_s)
            else:
                finished = []
                time.sleep(poll_s)  # every remaining job is held by another process: wait for it
            for config, metrics, status, seconds, skipped in finished:
                store.put(config, metrics, status, seconds)
                counts.skipped_images.update(skipped)
                note_skipped_quietly(skipped)  # so the command's end-of-run report counts a worker's skips too
                running -= 1
                bar.update()
                if status == "done":
                    counts.done += 1
                else:
                    counts.failed.append(job_key(config))
                    log.warning("job %s failed: %s", job_label(config), metrics.get("error"))
                if on_result is not None:
                    on_result(config, metrics, status)
            if not queue:
                queue.extend(waiting)
                waiting.clear()
    return counts


def job_label(config: dict[str, Any], width: int = 160) -> str:
    """A job in one short line: its scalar settings (lists and maps such as a class map left out)."""
    text = " ".join(f"{k}={v}" for k, v in config.items() if isinstance(v, (str, int, float, bool)))
    return text if len(text) <= width else text[:width - 1] + "…"


def failed_rows(store: ResultsStore, keys: Iterable[str]) -> list[ResultRow]:
    """The store's failed rows among ``keys`` (e.g. to list a study's failures with their errors)."""
    wanted = set(keys)
    return [r for r in store.rows("failed") if r.key in wanted]
