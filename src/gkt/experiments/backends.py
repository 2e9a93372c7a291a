"""Where a study's jobs run: inline, in a local process pool (one GPU per worker when the study runs on
CUDA), or as Ray tasks. A backend opens a *session* with ``capacity`` job slots: ``submit`` a job,
``wait`` for finished ones; the study driver decides what to submit (see :func:`gkt.experiments.grid.run_study`)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, Protocol

from gkt.core.errors import GktError
from gkt.data.decode import note_skipped, reset_skipped, skipped_images

JobConfig = dict[str, Any]
JobFn = Callable[[JobConfig], dict[str, Any]]
# config, metrics, status (done | failed), seconds, and the images the job left out under --bad-images skip
# (source -> reason), which happens in whichever process runs the job
Outcome = tuple[JobConfig, dict[str, Any], str, float, dict[str, str]]


def note_skipped_quietly(skipped: dict[str, str]) -> None:
    """Add images left out elsewhere (a worker process, an earlier job) to this process's count, without
    warning about each again."""
    for source, reason in skipped.items():
        note_skipped(source, reason, quiet=True)


def run_one(fn: JobFn, config: JobConfig) -> Outcome:
    earlier = skipped_images()  # this process's count before the job (a pool worker's earlier jobs, ...)
    reset_skipped()
    start = time.perf_counter()
    try:
        metrics, status = fn(config), "done"
    except Exception as exc:  # a failed job is recorded, not fatal for the study
        metrics, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, "failed"
    seconds, skipped = time.perf_counter() - start, skipped_images()
    note_skipped_quietly(earlier)
    return config, metrics, status, seconds, skipped


def visible_gpus(device_count: int | None = None) -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (its own list when set,
    else ``0..N-1``; ``device_count`` defaults to torch's count)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    return [str(i) for i in range(device_count)]


def worker_gpus(workers: int, gpus: Sequence[str]) -> list[str]:
    """One GPU per worker, round robin (several workers share a GPU when there are more workers)."""
    return [gpus[i % len(gpus)] for i in range(workers)] if gpus else []


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Ends this worker as soon as the study process that started it is gone (also after SIGKILL)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _init_worker(threads: int, parent: int | None = None, gpus: Any = None) -> None:
    from gkt.core.runtime import set_cpu_share

    if gpus is not None:  # before this process touches CUDA: the worker sees exactly its GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus.get(timeout=60)
    set_cpu_share(threads)  # torch threads and decoding workers share the worker's CPUs
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), name="gkt-orphan-guard", daemon=True).start()


@contextmanager
def worker_pool(workers: int, context: Any, threads: int, gpus: Any = None) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers (``threads`` torch threads each) end with this process, even when it is
    killed; when the block is left by an exception (an interruption, SIGTERM), queued jobs are cancelled and
    running ones stopped instead of waited for."""
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads, os.getpid(), gpus))
    try:
        yield pool
    except BaseException:
        processes = list((pool._processes or {}).values())  # the executor has no public way to stop them
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        raise
    pool.shutdown(wait=True)


class Session(Protocol):
    capacity: int

    def submit(self, config: JobConfig) -> None: ...

    def wait(self, timeout: float) -> list[Outcome]: ...


class _InlineSession:
    capacity = 1

    def __init__(self, fn: JobFn):
        self.fn, self.finished = fn, []

    def submit(self, config: JobConfig) -> None:
        self.finished.append(run_one(self.fn, config))

    def wait(self, timeout: float) -> list[Outcome]:
        finished, self.finished = self.finished, []
        return finished


class _PoolSession:
    def __init__(self, pool: ProcessPoolExecutor, fn: JobFn, capacity: int):
        self.pool, self.fn, self.capacity, self.pending = pool, fn, capacity, set[Future]()

    def submit(self, config: JobConfig) -> None:
        self.pending.add(self.pool.submit(run_one, self.fn, config))

    def wait(self, timeout: float) -> list[Outcome]:
        finished, self.pending = wait(self.pending, timeout=timeout, return_when=FIRST_COMPLETED)
        try:
            return [future.result() for future in finished]
        except BrokenProcessPool as exc:
            raise GktError("a study worker process died (out of memory, or killed); the jobs it finished are in "
                           "the results store: run the study again with --resume, maybe with fewer --workers") from exc


class LocalBackend:
    """Runs jobs in ``workers`` processes (or inline with ``workers=1``), ``threads`` torch threads each.
    With ``gpus`` (``CUDA_VISIBLE_DEVICES`` entries, see :func:`visible_gpus`), worker *i* sees only GPU
    ``gpus[i % len(gpus)]``. Workers end with the study process, even when it is killed."""

    def __init__(self, workers: int = 1, threads: int | None = None, gpus: Sequence[str] = ()):
        self.workers = max(1, workers)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.workers)
        self.gpus = list(gpus)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Nothing to hold between sessions (see :meth:`RayBackend.held`)."""
        yield

    @contextmanager
    def session(self, fn: JobFn) -> Iterator[Session]:
        if self.workers == 1:
            _init_worker(self.threads)
            yield _InlineSession(fn)
            return
        # CUDA cannot be used in a process forked after its parent touched it: GPU workers are spawned
        context = multiprocessing.get_context("spawn" if self.gpus else None)
        queue = None
        if self.gpus:
            queue = context.Queue()
            for gpu in worker_gpus(self.workers, self.gpus):
                queue.put(gpu)
        with worker_pool(self.workers, context, self.threads, queue) as pool:
            yield _PoolSession(pool, fn, self.workers)


def ray_resources(num_cpus: float, device_type: str, num_gpus: float = 1) -> dict[str, float]:
    """The resources one study task asks Ray for: ``num_cpus``, plus ``num_gpus`` when the study runs on CUDA."""
    return {"num_cpus": num_cpus, **({"num_gpus": num_gpus} if device_type == "cuda" else {})}


def ray_capacity(cluster: dict[str, float], resources: dict[str, float]) -> int:
    """How many tasks of ``resources`` the cluster runs at once (the study keeps that many in flight)."""
    names = {"num_cpus": "CPU", "num_gpus": "GPU"}
    slots = [cluster.get(names[name], 0) / amount for name, amount in resources.items() if amount > 0]
    return max(1, int(min(slots, default=1)))


class _RaySession:
    def __init__(self, ray: Any, remote_job: Any, capacity: int):
        self.ray, self.remote_job, self.capacity, self.pending = ray, remote_job, capacity, []

    def submit(self, config: JobConfig) -> None:
        self.pending.append(self.remote_job.remote(config))

    def wait(self, timeout: float) -> list[Outcome]:
        finished, self.pending = self.ray.wait(self.pending, num_returns=1, timeout=timeout)
        return self.ray.get(finished)


class RayBackend:
    """Runs every job as a Ray task on an existing cluster (``address``) or a local Ray instance; each task
    asks for ``num_cpus_per_job`` CPUs and, when the study runs on CUDA (``device_type``), ``num_gpus_per_job``
    GPUs (Ray then sets each task's visible GPU)."""

    def __init__(self, address: str | None = None, num_cpus_per_job: float = 1, threads: int = 1,
                 local_cpus: int | None = None, device_type: str = "cpu", num_gpus_per_job: float = 1):
        self.address, self.threads, self.local_cpus = address, threads, local_cpus
        self.resources = ray_resources(num_cpus_per_job, device_type, num_gpus_per_job)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Ray started once for several :meth:`session` calls (e.g. the stages of an improve search)."""
        ray = self._ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, num_cpus=None if self.address else self.local_cpus,
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        try:
            yield
        finally:
            if started_here:
                ray.shutdown()

    @staticmethod
    def _ray() -> Any:
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
        return ray

    @contextmanager
    def session(self, fn: JobFn) -> Iterator[Session]:
        ray = self._ray()
        threads = self.threads

        def remote_job(config: JobConfig) -> Outcome:
            _init_worker(threads)
            return run_one(fn, config)

        with self.held():
            capacity = ray_capacity(ray.cluster_resources(), self.resources)
            yield _RaySession(ray, ray.remote(**self.resources)(remote_job), capacity)
