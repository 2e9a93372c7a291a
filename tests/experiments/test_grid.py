"""The grid runner's reliability: claims (two processes, one store), workers that die with their study,
damaged stores, and how jobs are spread over GPUs (assignment logic only; no GPU needed)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from gkt.core.errors import GktError
from gkt.data.datasets import iterate_batches
from gkt.data.decode import reset_skipped, skipped_images
from gkt.data.folder import load_image_folder
from gkt.experiments.backends import ray_capacity
from gkt.experiments.grid import (
    LocalBackend,
    ResultsStore,
    expand_grid,
    job_key,
    ray_resources,
    run_study,
    visible_gpus,
    worker_gpus,
)
from tests.data.test_decode import write_jpeg_folder

HERE = Path(__file__).parent


def _script(body: str) -> str:
    return textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(HERE)!r})
        from gkt.experiments.grid import LocalBackend, ResultsStore, expand_grid, run_study
    """) + textwrap.dedent(body)


def logged_job(config: dict) -> dict:
    """Appends ``key pid`` to the log file named in the config, then sleeps a while."""
    with open(config["log"], "a") as f:
        f.write(f"{config['i']} {os.getpid()}\n")
    time.sleep(config["sleep"])
    return {"i": config["i"], "pid": os.getpid()}


def test_two_processes_on_one_store_never_run_a_job_twice(tmp_path: Path) -> None:
    db, log = tmp_path / "shared.sqlite", tmp_path / "runs.log"
    jobs = expand_grid({"log": str(log), "sleep": 0.3}, {"i": list(range(8))})
    script = _script(f"""
        from test_grid import logged_job
        counts = run_study(logged_job, {jobs!r}, ResultsStore({str(db)!r}), LocalBackend(1), poll_s=0.1)
        print(counts.done, counts.skipped, counts.ok)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].split() for p in procs]
    ran = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(ran) == sorted(str(i) for i in range(8))  # each job once
    assert sum(int(o[0]) for o in outputs) == 8 and all(o[2] == "True" for o in outputs)
    assert all(int(o[0]) + int(o[1]) == 8 for o in outputs)  # each saw every job finish (its own or the other's)
    assert len(ResultsStore(db).done_keys()) == 8


def test_claims_of_live_and_dead_owners(tmp_path: Path) -> None:
    store, job = ResultsStore(tmp_path / "c.sqlite"), {"i": 1}
    assert store.claim(job, "otherhost:1:a") == "claimed"
    assert store.claim(job, "otherhost:2:b") == "busy"  # another host, fresh heartbeat
    assert store.claim(job, "otherhost:2:b", stale_after=-1) == "claimed"  # its heartbeat is too old: taken over
    with sqlite3.connect(store.path) as db:  # this host, a live process (paused, say) 2 minutes without a beat
        db.execute("UPDATE results SET owner = ?, heartbeat = heartbeat - 120", (f"{os.uname().nodename}:{os.getpid()}:p",))
    assert store.claim(job, "me:4:d", stale_after=60) == "busy"  # it keeps its claim (10 x longer)
    assert store.claim(job, "me:4:d", stale_after=10) == "claimed"  # beyond that: a reused process id
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sqlite3.connect(store.path) as db:  # this host, a process that has exited
        db.execute("UPDATE results SET owner = ?", (f"{os.uname().nodename}:{dead.stdout.strip()}:x",))
    assert store.claim(job, "me:3:c") == "claimed"
    store.put(job, {"v": 1}, "done", 0.1)
    assert store.claim(job, "me:3:c") == "done"
    with store.claims() as owner:
        assert store.claim({"i": 2}, owner) == "claimed"
    assert store.rows(None) == [r for r in store.rows(None) if r.status == "done"]  # released on exit


def test_killed_pool_study_leaves_no_workers_and_keeps_results(tmp_path: Path) -> None:
    """SIGKILL a ``workers=2`` study: its pool workers end too; what finished stays; a rerun takes over."""
    db, log = tmp_path / "pool.sqlite", tmp_path / "runs.log"
    jobs = expand_grid({"log": str(log)}, {"i": list(range(4))})
    for job in jobs:
        job["sleep"] = 0.1 if job["i"] == 0 else 600
    script = _script(f"""
        from test_grid import logged_job
        run_study(logged_job, {jobs!r}, ResultsStore({str(db)!r}), LocalBackend(2, threads=1), poll_s=0.1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    store = ResultsStore(db)
    deadline = time.time() + 600
    while time.time() < deadline and not (len(store.done_keys()) == 1 and log.is_file()
                                          and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    workers = {int(line.split()[1]) for line in log.read_text().splitlines()}
    assert len(store.done_keys()) == 1 and len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "pool workers outlived their study"
    assert store.done_keys() == {job_key(jobs[0])}
    quick = [{**j, "sleep": 0} for j in jobs[1:]]
    counts = run_study(logged_job, jobs[:1] + quick, store, LocalBackend(1), poll_s=0.1)
    assert counts.skipped == 1 and counts.done == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split()[2] == "Z")  # a zombie has ended


@pytest.mark.parametrize("damage", ["random", "truncated", "bad_json"])
def test_a_damaged_store_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    for i in range(200):
        store.put({"i": i, "pad": "x" * 200}, {"v": i}, "done", 0.0)
    if damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        with sqlite3.connect(path) as db:
            db.execute("UPDATE results SET metrics = '{not json' WHERE key = ?", (job_key({"i": 3, "pad": "x" * 200}),))
    with pytest.raises(GktError, match="results.sqlite"):
        ResultsStore(path).rows()


def test_workers_get_one_gpu_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus(device_count=4) == ["0", "1", "2", "3"]
    assert worker_gpus(3, visible_gpus(device_count=4)) == ["0", "1", "2"]
    assert worker_gpus(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert worker_gpus(2, []) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus(device_count=8) == ["3", "5"]  # the user's own selection is kept
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert LocalBackend(4, threads=1, gpus=visible_gpus()).gpus == ["0", "1"]


def gpu_of_worker(config: dict) -> dict:
    return {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


def test_pool_workers_see_their_gpu(tmp_path: Path) -> None:
    """Each worker process of a GPU study sees exactly one (here: pretend) GPU, in round robin."""
    store = ResultsStore(tmp_path / "g.sqlite")
    jobs = expand_grid({}, {"i": list(range(6))})
    run_study(gpu_of_worker, jobs, store, LocalBackend(2, threads=1, gpus=["0", "1"]))
    seen = {(r.metrics["pid"], r.metrics["gpu"]) for r in store.rows()}
    assert {gpu for _, gpu in seen} == {"0", "1"} and len({pid for pid, _ in seen}) == len(seen)


def test_ray_tasks_ask_for_gpus_on_cuda() -> None:
    assert ray_resources(1, "cpu") == {"num_cpus": 1}
    assert ray_resources(2, "cuda", 0.5) == {"num_cpus": 2, "num_gpus": 0.5}
    assert ray_capacity({"CPU": 16, "GPU": 2}, ray_resources(1, "cuda")) == 2
    assert ray_capacity({"CPU": 16, "GPU": 2}, ray_resources(1, "cuda", 0.5)) == 4
    assert ray_capacity({"CPU": 3}, ray_resources(1, "cpu")) == 3


def test_study_stores_rows_as_json(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "j.sqlite")
    run_study(gpu_of_worker, [{"i": 1}], store, LocalBackend(1))
    with sqlite3.connect(store.path) as db:
        config, metrics = db.execute("SELECT config, metrics FROM results").fetchone()
    assert json.loads(config) == {"i": 1} and set(json.loads(metrics)) == {"gpu", "pid"}


def decode_folder(config: dict) -> dict:
    """Decodes every image of the folder named in the config, leaving unreadable ones out."""
    dataset = load_image_folder(config["root"], image_size=16, bad_images="skip")
    seen = sum(len(idx) for _, _, idx in iterate_batches(dataset, 4, workers=0))
    return {"decoded": seen, "pid": os.getpid()}


@pytest.mark.parametrize("workers", [1, 2])
def test_images_skipped_in_study_workers_reach_the_summary(tmp_path: Path, workers: int) -> None:
    """A job's skipped images count in the study's summary and in the command's end-of-run report, also
    when the job ran in a pool worker process."""
    reset_skipped()
    roots = [write_jpeg_folder(tmp_path / f"data{i}", {"a": 2, "b": 2}, truncated=f"b/broken{i}.jpg")
             for i in range(2)]
    jobs = expand_grid({}, {"root": [str(r) for r in roots]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the job's own warning about each image
        counts = run_study(decode_folder, jobs, ResultsStore(tmp_path / "s.sqlite"), LocalBackend(workers, threads=1))
    broken = {str(roots[i] / "b" / f"broken{i}.jpg") for i in range(2)}
    assert counts.done == 2 and [r.metrics["decoded"] for r in ResultsStore(tmp_path / "s.sqlite").rows()] == [4, 4]
    if workers > 1:
        assert {r.metrics["pid"] for r in ResultsStore(tmp_path / "s.sqlite").rows()} != {os.getpid()}
    assert set(counts.skipped_images) == broken and counts.as_dict()["skipped_images"] == 2
    assert "2 unreadable image(s) left out (--bad-images skip)" in counts.describe()
    assert set(skipped_images()) == broken  # what `gkt study` prints and writes to skipped_images.json
    reset_skipped()


def test_forget_leaves_a_running_claim_alone(tmp_path: Path) -> None:
    """Forgetting jobs whose outputs were deleted must not drop another live process's claim (it would then
    run twice at once)."""
    store = ResultsStore(tmp_path / "results.sqlite")
    running, finished = {"job": 1}, {"job": 2}
    with store.claims() as other, store.claims() as me:
        assert store.claim(running, other) == "claimed" and store.claim(finished, other) == "claimed"
        store.put(finished, {"acc": 0.5}, "done", 1.0)
        store.forget([job_key(running), job_key(finished)])
        assert store.claim(running, me) == "busy"  # still held by the other process
        assert store.claim(finished, me) == "claimed"  # forgotten: it runs again


def test_an_interrupted_worker_pool_stops_its_workers_at_once() -> None:
    import multiprocessing

    from gkt.experiments.backends import worker_pool

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), worker_pool(1, multiprocessing.get_context("spawn"), 1) as pool:
        running = pool.submit(time.sleep, 60)
        pool.submit(time.sleep, 60)  # queued
        while not running.running():
            time.sleep(0.05)
        processes = list(pool._processes.values())
        raise KeyboardInterrupt
    for process in processes:  # the executor's own thread may reap it first: then its exit code appears later
        deadline = time.monotonic() + 10
        while process.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process.is_alive()
    assert time.monotonic() - start < 30  # not the 120 s of waiting for both jobs
