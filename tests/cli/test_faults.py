"""Faults: a transfer or a study killed with SIGKILL resumes to the same result; an unwritable or full
output location fails before any work; nothing in gkt unpickles a checkpoint."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import COMPARED, fmnist_dir, make_blobs, new_runs, write_model
from safetensors.torch import save_file

import gkt
from gkt.cli import main
from gkt.core.config import Recipe
from gkt.experiments.grid import ResultsStore
from gkt.experiments.zoo import build_zoo, list_zoo
from gkt.models import ArchSpec, Classifier, Preprocess, load_model, weights_hash
from gkt.models.checkpoint import checkpoint_paths
from gkt.models.zoo import ZooEntry, entry_path

SOURCE = Path(gkt.__file__).parent


def start_gkt(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gkt", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fails if it ended on its own first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"gkt ended (code {proc.returncode}) before the kill: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "gkt did not get far enough in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, str, str]:
    """2000 random samples: an epoch (250 steps of 8) takes long enough to be killed in the middle."""
    return (fmnist_dir(tmp_path / "fmnist", 2000), write_model(tmp_path / "student", 1),
            write_model(tmp_path / "teacher", 2, hidden=8))


def test_sigkilled_transfer_resumes_to_the_same_result(tmp_path: Path, setup: tuple[Path, str, str]) -> None:
    data, student, teacher = setup
    common = ["--data-dir", str(data), "--threads", "1"]
    argv = ["transfer", "--student", student, "--teacher", teacher, "--fraction", "1.0", "--batch-size", "8",
            "--lr", "0.05", "--epochs", "8", "--method", "kl-dp", *common]
    killed_root, full_root = tmp_path / "killed", tmp_path / "full"
    proc = start_gkt(*argv, "--out", str(killed_root))
    kill_when(proc, lambda: any(killed_root.glob("*/state.pt")))
    (killed,) = killed_root.iterdir()
    assert not (killed / "final.json").exists() and not (killed / "student.safetensors").exists()
    for name in ("config.json", "resolved_config.json"):  # whatever was written is whole
        json.loads((killed / name).read_text())
    done_epochs = len((killed / "metrics.csv").read_text().splitlines()) - 2
    assert 1 <= done_epochs < 8

    assert main(["transfer", "--resume", str(killed), "--out", str(killed_root), *common]) == 0
    (resumed,) = new_runs(killed_root, {killed})
    assert main([*argv, "--out", str(full_root)]) == 0
    (full,) = full_root.iterdir()
    a, b = (json.loads((run / "final.json").read_text()) for run in (full, resumed))
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    assert weights_hash(load_model(a["checkpoint"])) == weights_hash(load_model(b["checkpoint"]))
    assert (full / "metrics.csv").read_text().count("\n") == (resumed / "metrics.csv").read_text().count("\n") == 10


def test_sigterm_ends_a_run_as_an_interruption(tmp_path: Path, setup: tuple[Path, str, str]) -> None:
    """``kill`` (SIGTERM, as batch schedulers and ``docker stop`` send) ends a command as Ctrl-C does: one
    line, exit 143, the kept run directory marked; while it runs, its config says so."""
    data, student, teacher = setup
    out = tmp_path / "runs"
    proc = start_gkt("transfer", "--student", student, "--teacher", teacher, "--fraction", "1.0", "--batch-size", "8",
                     "--epochs", "8", "--data-dir", str(data), "--threads", "1", "--out", str(out))
    deadline = time.monotonic() + 240
    while not any(out.glob("*/state.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.02)
    (run,) = out.iterdir()
    running = json.loads((run / "config.json").read_text())
    assert running["status"] == "running" and running["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 143
    err = proc.stderr.read().decode()
    assert "gkt: terminated" in err and "Traceback" not in err
    assert json.loads((run / "config.json").read_text())["status"] == "interrupted" and (run / "FAILED").is_file()


def test_sigkilled_study_reruns_only_the_missing_jobs(tmp_path: Path, setup: tuple[Path, str, str],
                                                      capsys: pytest.CaptureFixture) -> None:
    data, student, teacher = setup
    argv = ["study", "--students", student, teacher, "--methods", "kl", "kl-dp", "--epochs", "2", "--grid",
            "batch_size=8", "--fraction", "1.0", "--lr", "0.05", "--data-dir", str(data), "--threads", "1"]
    killed_root = tmp_path / "killed"
    proc = start_gkt(*argv, "--out", str(killed_root))

    def some_jobs_done() -> bool:
        path = next(killed_root.glob("*/results.sqlite"), None)
        return path is not None and len(ResultsStore(path).done_keys()) >= 1

    kill_when(proc, some_jobs_done)
    (killed,) = killed_root.iterdir()
    finished = len(ResultsStore(killed / "results.sqlite").done_keys())
    assert 1 <= finished < 4

    assert main(["study", "--resume", str(killed), "--out", str(tmp_path / "resumed"), "--threads", "1"]) == 0
    assert f"4 jobs: {finished} already done, {4 - finished} ran, 0 failed" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    (full,) = (tmp_path / "full").iterdir()
    resumed_rows, full_rows = (ResultsStore(run / "results.sqlite").rows() for run in (killed, full))
    assert [(r.key, {k: r.metrics[k] for k in COMPARED}) for r in resumed_rows] == \
           [(r.key, {k: r.metrics[k] for k in COMPARED}) for r in full_rows]
    assert len(full_rows) == 4


def test_unwritable_out_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["zoo", "list", "--out", str(blocker / "runs")]) == 2
    assert f"--out {blocker / 'runs'}: {blocker} is a file, not a directory" in capsys.readouterr().err
    assert main(["zoo", "list", "--out", str(blocker)]) == 2
    assert f"--out {blocker}: {blocker} is a file, not a directory" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["zoo", "list", "--out", str(locked)]) == 2
        assert "cannot write there (Permission denied)" in capsys.readouterr().err


def test_full_disk_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("gkt.cli.rundir.shutil.disk_usage", lambda path: usage._replace(free=20 * 2**20))
    out = tmp_path / "runs" / "nested"
    assert main(["zoo", "list", "--out", str(out)]) == 2
    assert "only 20 MB free on its disk, gkt needs at least 100 MB" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("GKT_MIN_FREE_MB", "10")
    assert main(["zoo", "list", "--out", str(out)]) == 1  # it ran: nothing is built
    assert "no zoo models built" in capsys.readouterr().out
    assert out.is_dir() and list(out.iterdir()) == []  # its run directory held nothing, so it was removed


def _calls(tree: ast.AST, module: str, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == name and isinstance(n.func.value, ast.Name) and n.func.value.id == module]


def test_no_checkpoint_is_ever_unpickled() -> None:
    """Every torch.load passes weights_only=True; pickle is never loaded; numpy never allows pickles."""
    offences, loads = [], 0
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch", "load"):
            loads += 1
            if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in call.keywords):
                offences.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
        for module in ("pickle", "cPickle", "dill", "joblib"):
            offences += [f"{path}:{c.lineno}: {module}.{c.func.attr}" for name in ("load", "loads", "Unpickler")
                         for c in _calls(tree, module, name)]
        offences += [f"{path}:{n.lineno}: allow_pickle=True" for n in ast.walk(tree) if isinstance(n, ast.keyword)
                     and n.arg == "allow_pickle" and not (isinstance(n.value, ast.Constant) and n.value.value is False)]
    assert loads >= 2  # the scan does see gkt's own checkpoint and state loaders
    assert offences == []


def test_zoo_build_killed_between_weights_and_sidecar_is_rebuilt(tmp_path: Path) -> None:
    """A kill after the weights and before the sidecar leaves half a checkpoint: it is not 'built'."""
    entry = ZooEntry("lin", "linear", "linear", Recipe(1, "sgd", 0.1, 0.0, 16))
    weights, sidecar = checkpoint_paths(entry_path(entry, tmp_path))
    stale = Classifier.create(ArchSpec("zoo", "linear", 4, 1, 12), Preprocess(12, 1, (0.5,), (0.3,)),
                              [f"class{c}" for c in range(4)])
    save_file({k: v.contiguous() for k, v in stale.net.state_dict().items()}, str(weights))
    assert list_zoo(tmp_path, (entry,)) == []
    (record,) = build_zoo((entry,), zoo_dir=tmp_path, train_set=make_blobs(10), test_set=make_blobs(5, seed=1),
                          check=False)
    assert not record.cached and sidecar.is_file()
    assert [r.name for r in list_zoo(tmp_path, (entry,))] == ["lin"]
