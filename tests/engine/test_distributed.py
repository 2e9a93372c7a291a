"""DDP under torchrun on CPU (gloo, 2 processes) matches one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gkt.core.errors import GktError
from gkt.data.fmnist import FASHION_MNIST_CLASSES
from gkt.engine.distributed import DistContext
from gkt.models import ArchSpec, Classifier, Preprocess, load_model, save_checkpoint


def write_model(path: Path, seed: int, hidden: int) -> str:
    """A dropout-free MLP: random masks would differ between one process and two."""
    torch.manual_seed(seed)
    model = Classifier.create(ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [hidden], "dropout": 0.0}),
                              Preprocess(14, 1, (0.5,), (0.3,)), FASHION_MNIST_CLASSES)
    save_checkpoint(model, path)
    return f"file:{path}"


def gkt_transfer(launcher: list[str], out: Path, fmnist: Path, student: str, teacher: str) -> Path:
    args = ["transfer", "--student", student, "--teacher", teacher, "--method", "kl-dp", "--data-dir", str(fmnist),
            "--fraction", "1.0", "--batch-size", "10", "--epochs", "2", "--lr", "0.05", "--threads", "1",
            "--device", "cpu", "--out", str(out)]
    done = subprocess.run([*launcher, "-m", "gkt", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    return run_dir


def test_two_gloo_processes_match_one(tmp_path: Path, tiny_fmnist_dir: Path) -> None:
    student, teacher = write_model(tmp_path / "student", 1, 16), write_model(tmp_path / "teacher", 2, 8)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    single = gkt_transfer([sys.executable], tmp_path / "one", tiny_fmnist_dir, student, teacher)
    ddp = gkt_transfer(torchrun, tmp_path / "two", tiny_fmnist_dir, student, teacher)
    a, b = (json.loads((d / "final.json").read_text()) for d in (single, ddp))
    for key in ("acc", "delta_transf", "knowledge_gain", "knowledge_loss", "acc_teacher", "acc_student_before"):
        assert a[key] == pytest.approx(b[key], abs=1e-9), key
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert json.loads((ddp / "resolved_config.json").read_text())["runtime"]["processes"] == 2
    wa, wb = (load_model(f["checkpoint"]).net.state_dict() for f in (a, b))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert len(list((tmp_path / "two").iterdir())) == 1  # rank 1 wrote no run directory


def test_global_batch_must_split_over_ranks() -> None:
    assert DistContext(0, 2).shard_batch(10) == 5
    with pytest.raises(GktError, match="multiple of 3"):
        DistContext(0, 3).shard_batch(10)


def test_ranks_meet_before_leaving_only_after_a_completed_command(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from gkt.engine.distributed import shutdown

    barriers = []
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1))
    for completed in (True, False):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store-{completed}'}", rank=0, world_size=1)
        shutdown(completed=completed)
        assert not dist.is_initialized()
    assert barriers == [1]  # a failed rank may never reach a barrier: none after a failure
