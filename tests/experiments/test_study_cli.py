"""End to end: a tiny study through the CLI on Fashion-MNIST, its resume, and its report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gkt.cli import main
from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.engine.loop import train_supervised
from gkt.models import ArchSpec, Classifier, Preprocess, save_checkpoint


def _fmnist_subset() -> ImageDataset:
    try:
        return stratified_subset(load_split("fmnist", "train", val_fraction=0), fraction=0.02, seed=0)
    except GktError:
        pytest.skip("Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    train = _fmnist_subset()
    out = tmp_path_factory.mktemp("models")
    specs = []
    for name, arch in (("lin", ArchSpec("zoo", "linear", 10, 1, 7)),
                       ("mlp", ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [32]}))):
        torch.manual_seed(0)
        model = Classifier.create(arch, Preprocess(arch.img_size, 1, (0.286,), (0.353,)), train.class_names)
        train_supervised(model, train, Recipe(3, "sgd", 0.05, 0.0, 64), torch.device("cpu"))
        specs.append(f"file:{save_checkpoint(model, out / name)}")
    return specs


def test_study_resume_and_report(two_models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["study", "--students", *two_models, "--methods", "kl", "kl-dp", "--epochs", "1", "--fraction", "0.02",
            "--out", str(tmp_path), "--threads", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 jobs: 0 already done, 4 ran, 0 failed" in out and "kl-dp" in out
    run = next(tmp_path.glob("study-*"))
    for name in ("results.sqlite", "pairs.csv", "success_table.csv", "fig4a_success_rate.png", "fig7_gain_vs_loss.png"):
        assert (run / name).is_file(), name
    import json

    before = json.loads((run / "config.json").read_text())
    for name in ("pairs.csv", "success_table.csv", "fig4a_success_rate.png"):
        (run / name).unlink()
    assert main(["study", "--resume", str(run), "--methods", "ce", "--out", str(tmp_path)]) == 2  # refused
    assert json.loads((run / "config.json").read_text()) == before and not (run / "FAILED").exists()
    capsys.readouterr()
    assert main(["study", "--resume", str(run)]) == 0
    assert "4 jobs: 4 already done, 0 ran" in capsys.readouterr().out
    assert list(tmp_path.glob("study-*")) == [run]  # continued in its own folder: tables there, no new folder
    for name in ("pairs.csv", "success_table.csv", "fig4a_success_rate.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["students"] == before["students"] and config["status"] == "ok"
    assert [r["resume"] for r in config["resumed"]] == [str(run)]
    assert main(["report", str(run), "--out", str(tmp_path)]) == 0
    page = (run / "report.html").read_text()
    assert "success_table.csv" in page and page.count("data:image/png;base64,") == 5
    assert "| method" in (run / "report.md").read_text() and "not complete" not in page
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "status": "interrupted"}))  # as a Ctrl-C leaves it
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path)]) == 0
    assert "is not complete (status: interrupted)" in capsys.readouterr().out
    assert "This run is not complete (status: interrupted" in (run / "report.md").read_text()


def test_study_rejects_bad_grid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["study", "--students", "zoo:a", "zoo:b", "--grid", "colour=red", "--out", str(tmp_path)]) == 2
    assert "--grid expects" in capsys.readouterr().err


def test_transfer_job_ignores_the_workers_rng_state(tmp_path: Path) -> None:
    """A dropout student's run depends only on its config, not on the RNG state its worker is in."""
    from gkt.experiments.transfer_job import transfer_job

    train = _fmnist_subset()
    arch = ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [32], "dropout": 0.5})
    specs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = Classifier.create(arch, Preprocess(arch.img_size, 1, (0.286,), (0.353,)), train.class_names)
        specs.append(f"file:{save_checkpoint(model, tmp_path / f'm{seed}')}")
    config = {"student": specs[0], "teacher": specs[1], "method": "kl", "epochs": 1, "lr": 0.05, "fraction": 0.02,
              "seed": 3, "device": "cpu"}
    results = []
    for state in (1, 2):
        torch.manual_seed(state)
        results.append(transfer_job(config)["acc"])
    assert results[0] == results[1]


def test_study_grid_over_student_mode_reaches_the_transfer_config() -> None:
    from gkt.experiments.study import study_jobs
    from gkt.transfer import TransferConfig

    jobs = study_jobs(["zoo:a", "zoo:b"], methods=["kl-dp"], grid=["student_mode=train,eval"])
    assert study_jobs(["zoo:a", "zoo:b"], methods=["kl-dp"], grid={"student_mode": ["train", "eval"]}) == jobs
    assert sorted((j["student"], j["student_mode"]) for j in jobs) == [
        ("zoo:a", "eval"), ("zoo:a", "train"), ("zoo:b", "eval"), ("zoo:b", "train")]
    assert TransferConfig(method="kl-dp", student_mode=jobs[0]["student_mode"]).build_method().name == "kl-dp"
    with pytest.raises(GktError, match="student_mode must be"):
        TransferConfig(student_mode="frozen").build_method()


def test_failed_jobs_are_listed_and_retried_only_when_asked(two_models: list[str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    missing = f"file:{tmp_path / 'nowhere'}"
    args = ["study", "--students", two_models[0], "--teachers", two_models[1], missing, "--methods", "kl",
            "--epochs", "1", "--fraction", "0.02", "--out", str(tmp_path), "--threads", "1"]
    assert main(args) == 2  # a job failed on its inputs (a missing model file): a user error
    captured = capsys.readouterr()
    out = captured.out
    assert "2 jobs: 0 already done, 1 ran, 1 failed" in out and f"failed: {missing} -> {two_models[0]} kl" in out
    assert "1 of 2 jobs failed on their inputs" in captured.err and "--retry-failed" in captured.err
    assert "Traceback" not in captured.err
    run = next(tmp_path.glob("study-*"))
    assert main(["study", "--resume", str(run), "--out", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "1 already done, 0 ran, 0 failed, 1 failed before (not retried; --retry-failed reruns them)" in out
    assert f"failed: {missing} -> {two_models[0]}" in out
    assert main(["study", "--resume", str(run), "--retry-failed", "--out", str(tmp_path)]) == 2
    assert "1 already done, 0 ran, 1 failed" in capsys.readouterr().out


@pytest.mark.parametrize("grid", ["lr=abc", "epochs=1.5", "batch_size=true", "student_mode=frozen"])
def test_study_refuses_bad_grid_values_up_front(grid: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["study", "--students", "zoo:a", "zoo:b", "--grid", grid, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--grid {grid.split('=')[0]}=" in err and "Traceback" not in err
    assert not list(tmp_path.glob("study-*/results.sqlite"))


def test_study_refuses_fp16_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["study", "--students", "zoo:a", "zoo:b", "--precision", "fp16", "--device", "cpu",
                 "--out", str(tmp_path)]) == 2
    assert "fp16 autocast needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("damage", [b"", b"random"])
def test_resume_of_a_damaged_store_exits_2(damage: bytes, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import os

    run = tmp_path / "old"
    run.mkdir()
    (run / "jobs.json").write_text("[]")
    (run / "results.sqlite").write_bytes(os.urandom(2048) if damage else b"SQLite format 3\x00" + os.urandom(100))
    assert main(["study", "--resume", str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "results.sqlite is not a readable results store" in err and "Traceback" not in err


def test_batch_size_precision_and_device_reach_every_job() -> None:
    from gkt.experiments.study import study_jobs

    jobs = study_jobs(["zoo:a", "zoo:b"], batch_size=256, precision="bf16", device="cpu")
    assert len(jobs) == 4 and all((j["batch_size"], j["precision"], j["device"]) == (256, "bf16", "cpu") for j in jobs)
    plain = study_jobs(["zoo:a", "zoo:b"])
    assert not {"batch_size", "precision", "device"} & set(plain[0])  # defaults keep the keys of older stores


def test_study_backend_spreads_cuda_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from gkt.cli import build_parser
    from gkt.cli.study import study_backend

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = build_parser().parse_args(["study", "--workers", "2"])
    args.torch_device = torch.device("cuda")
    assert study_backend(args).gpus == ["0", "1", "2"]
    args.torch_device = torch.device("cuda", 1)
    assert study_backend(args).gpus == []  # an explicit device: every worker on it
    args.torch_device, args.backend = torch.device("cuda"), "ray"
    assert study_backend(args).resources == {"num_cpus": 1, "num_gpus": 1.0}


def test_resume_refuses_changed_data(two_models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A study resumed after its data changed would mix results of two data sets: refused, exit 2."""
    from tests.conftest import fmnist_dir

    data = fmnist_dir(tmp_path / "data", 400)
    args = ["study", "--students", two_models[0], "--teachers", two_models[1], "--methods", "kl", "--epochs", "1",
            "--fraction", "0.5", "--data-dir", str(data), "--out", str(tmp_path / "runs"), "--threads", "1"]
    assert main(args) == 0
    run = next((tmp_path / "runs").glob("study-*"))
    resume = ["study", "--resume", str(run), "--out", str(tmp_path / "runs")]
    assert main(resume) == 0 and "1 already done" in capsys.readouterr().out  # the same data: resumed
    fmnist_dir(tmp_path / "other", 400, seed=1)
    for name in ("t10k-images-idx3-ubyte.gz",):  # other test images, same names, shapes and labels
        (data / name).write_bytes((tmp_path / "other" / name).read_bytes())
    assert main(resume) == 2
    assert "the data changed since this study ran" in capsys.readouterr().err


def test_resume_runs_the_study_own_jobs_with_its_own_models(two_models: list[str], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """A resumed study can be resumed again; options that would change its jobs, and specs that now name other
    weights, are refused (exit 2): its finished jobs would describe other jobs or models."""
    import json
    import shutil

    specs = []
    for spec in two_models:  # copies: the test overwrites one
        source = Path(spec.removeprefix("file:"))
        for suffix in (".safetensors", ".json"):
            shutil.copy(source.with_suffix(suffix), tmp_path / f"{source.stem}{suffix}")
        specs.append(f"file:{tmp_path / source.stem}")
    out = ["--out", str(tmp_path / "runs")]
    assert main(["study", "--students", specs[0], "--teachers", specs[1], "--methods", "kl", "--epochs", "1",
                 "--fraction", "0.02", "--threads", "1", *out]) == 0
    first = next((tmp_path / "runs").glob("study-*"))
    assert main(["study", "--resume", str(first), *out]) == 0
    second = first.with_name("moved")  # an older gkt resumed into a new folder that points to the store
    second.mkdir()
    for name in ("jobs.json", "data.json", "models.json", "config.json"):
        shutil.copy(first / name, second / name)
    (second / "store.json").write_text(json.dumps({"store": str((first / "results.sqlite").resolve())}))
    capsys.readouterr()
    assert main(["study", "--resume", str(second), *out]) == 0
    assert "1 jobs: 1 already done, 0 ran" in capsys.readouterr().out
    assert main(["study", "--resume", str(first), "--seeds", "1", "--methods", "ce", *out]) == 2
    assert "you gave --methods, --seeds" in capsys.readouterr().err
    teacher = Path(specs[1].removeprefix("file:"))
    torch.manual_seed(5)
    other = Classifier.create(ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [32]}),
                              Preprocess(14, 1, (0.286,), (0.353,)), load_split("fmnist", "test").class_names)
    for suffix in (".safetensors", ".json"):
        teacher.with_suffix(suffix).unlink()
    save_checkpoint(other, teacher)
    assert main(["study", "--resume", str(second), *out]) == 2
    assert "name other models than when this study ran" in capsys.readouterr().err
