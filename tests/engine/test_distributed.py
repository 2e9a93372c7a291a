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


def write_model(path: Path, seed: int, hidden: int, arch: str = "mlp") -> str:
    """A dropout-free MLP (random masks would differ between one process and two), or a small CNN with
    BatchNorm layers (``arch="cnn"``)."""
    torch.manual_seed(seed)
    kwargs = {"hidden": [hidden], "dropout": 0.0} if arch == "mlp" else {"channels": [hidden, hidden]}
    model = Classifier.create(ArchSpec("zoo", arch, 10, 1, 14, kwargs), Preprocess(14, 1, (0.5,), (0.3,)),
                              FASHION_MNIST_CLASSES)
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


def test_batchnorm_student_in_the_default_mode_matches_one_process(tmp_path: Path, tiny_fmnist_dir: Path) -> None:
    """The student's BatchNorm layers train on the global batch's statistics on every rank (and are saved
    as plain BatchNorm): the same metrics, weights and running statistics as one process."""
    student, teacher = write_model(tmp_path / "student", 1, 4, "cnn"), write_model(tmp_path / "teacher", 2, 8)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    single = gkt_transfer([sys.executable], tmp_path / "one", tiny_fmnist_dir, student, teacher)
    ddp = gkt_transfer(torchrun, tmp_path / "two", tiny_fmnist_dir, student, teacher)
    a, b = (json.loads((d / "final.json").read_text()) for d in (single, ddp))
    assert a["config"]["student_mode"] == "train"
    for key in ("acc", "delta_transf", "knowledge_gain", "knowledge_loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-9), key
    wa, wb = (load_model(f["checkpoint"]).net.state_dict() for f in (a, b))
    assert wa.keys() == wb.keys() and any(k.endswith("running_var") for k in wa)
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)
    assert torch.all(wa["body.0.1.running_var"] != load_model(student).net.state_dict()["body.0.1.running_var"])


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


def test_cross_rank_batchnorm_computes_what_batchnorm_does(tmp_path: Path) -> None:
    """In-process check of the synced layers (a one-process group standing in for rank 0 of 2, the other
    rank contributing nothing): outputs, gradients and running statistics of torch's BatchNorm2d and
    timm's BatchNormAct2d, and the undo puts the original layers back with the trained values."""
    import torch.distributed as dist
    from timm.layers import BatchNormAct2d

    from gkt.engine.distributed import CrossRankBatchNorm, sync_batchnorm

    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), BatchNormAct2d(4),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 36, 2))

    x = torch.randn(6, 3, 8, 8) * 3 + 1
    plain, synced = net(), net()
    layers = list(synced)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        undo = sync_batchnorm(synced, DistContext(0, 2))
        assert [type(m) for m in synced[1:3]] == [CrossRankBatchNorm, CrossRankBatchNorm]
        outputs = [m.train()(x) for m in (plain, synced)]
        for out in outputs:
            out.square().sum().backward()
    finally:
        dist.destroy_process_group()
    undo()
    assert list(synced) == layers  # the same layer objects, plain again
    torch.testing.assert_close(outputs[1], outputs[0])
    for (name, a), b in zip(plain.named_parameters(), synced.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(plain.named_buffers(), synced.buffers()):
        torch.testing.assert_close(b, a, msg=name)
