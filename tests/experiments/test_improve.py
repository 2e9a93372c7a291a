"""``gkt improve``: disjoint splits, a certification split used once, refusals that leave the student as it
was, harmful teachers never accepted, resume after kill -9, and one result from the CLI and the Python API."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gkt
from gkt.analysis.certify import certify
from gkt.cli import main
from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.data import datasets as datasets_module
from gkt.data.datasets import TensorImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.engine.loop import train_supervised
from gkt.experiments import improve as improve_module
from gkt.experiments.improve import ImproveConfig, load_splits
from gkt.models import ArchSpec, Classifier, Preprocess, save_checkpoint

FAST = ["--fraction", "0.05", "--lrs", "0.01", "0.1", "--epochs", "1", "--longer-epochs", "2", "--threads", "2"]
FAST_API = {"fraction": 0.05, "lrs": (0.01, 0.1), "epochs": 1, "longer_epochs": 2}


def _train_split(fraction: float, seed: int = 0) -> TensorImageDataset:
    try:
        return stratified_subset(load_split("fmnist", "train", val_fraction=0), fraction=fraction, seed=seed)
    except GktError:
        pytest.skip("Fashion-MNIST not installed")


def _trained(arch: ArchSpec, data: TensorImageDataset, epochs: int, path: Path, shift: int = 0) -> str:
    torch.manual_seed(0)
    model = Classifier.create(arch, Preprocess(arch.img_size, 1, (0.286,), (0.353,)), data.class_names)
    if shift:  # trained on shifted labels: confidently wrong everywhere
        data = TensorImageDataset(data.name + "-shifted", data.images, (data.labels + shift) % 10, data.class_names)
    train_supervised(model, data, Recipe(epochs, "sgd", 0.05, 0.0, 64), torch.device("cpu"))
    return f"file:{save_checkpoint(model, path)}"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A weak student (linear, little training), a good teacher, a harmful one (shifted labels)."""
    out = tmp_path_factory.mktemp("improve-zoo")
    small, large = _train_split(0.01), _train_split(0.1, seed=1)
    mlp = ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [64]})
    return {"student": _trained(ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [32]}), small, 1, out / "student"),
            "teacher": _trained(mlp, large, 3, out / "teacher"),
            "harmful": _trained(mlp, large, 3, out / "harmful", shift=1)}


def _files(spec: str) -> dict[str, bytes]:
    path = Path(spec.removeprefix("file:"))
    return {p.name: p.read_bytes() for p in (path.with_suffix(".safetensors"), path.with_suffix(".json"))}


def _decision(out: Path) -> dict:
    (run,) = sorted(out.glob("improve-*"))[-1:]
    return json.loads((run / "decision.json").read_text())


def test_splits_are_disjoint_and_stated() -> None:
    _train_split(0.01)  # skips without Fashion-MNIST
    for held_out in ("test", "val"):
        splits = load_splits("fmnist", None, held_out, 0.1, 0.5, 0.05, 0)
        sel, cert = splits.selection.images.flatten(1), splits.certification.images.flatten(1)
        seen = {bytes(row.numpy()) for row in splits.transfer.images.flatten(1)}
        selection = {bytes(row.numpy()) for row in sel}
        certification = {bytes(row.numpy()) for row in cert}
        assert not selection & certification and not seen & selection and not seen & certification
        assert len(splits.selection) + len(splits.certification) == (10000 if held_out == "test" else 6000)
        assert torch.bincount(splits.selection.labels).tolist() == torch.bincount(splits.certification.labels).tolist()
        assert splits.sizes()["held_out_from"]


def test_certificate_matches_exact_mcnemar_and_bound() -> None:
    before = torch.tensor([False] * 30 + [True] * 70)
    after = before.clone()
    after[:20] = True  # 20 turned right
    after[30:33] = False  # 3 turned wrong
    cert = certify(before, after, 0.05)
    assert (cert.turned_right, cert.turned_wrong, cert.samples) == (20, 3, 100)
    assert cert.delta_acc == pytest.approx(0.17)
    from scipy.stats import binomtest

    assert cert.p_value == pytest.approx(binomtest(20, 23, 0.5, alternative="greater").pvalue)
    assert cert.accepted and 0 < cert.lower_bound < cert.delta_acc
    # the bound is above zero exactly when the test rejects at the risk
    for plus, minus in ((12, 4), (11, 4), (10, 4), (5, 5), (0, 3)):
        b = torch.zeros(200, dtype=torch.bool)
        b[100:] = True
        a = b.clone()
        a[:plus] = True
        a[100:100 + minus] = False
        c = certify(b, a, 0.05)
        assert (c.lower_bound > 0) == (c.p_value < 0.05) == c.accepted
    nothing = certify(before, before, 0.05)
    assert not nothing.accepted and nothing.p_value == 1.0


def test_accepts_a_gain_uses_certification_once_and_api_equals_cli(zoo: dict[str, str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    reads: list[str] = []
    passes: list[int] = []
    original_batches = datasets_module.iterate_batches
    original_pass = improve_module.certification_pass
    inside = {"pass": False}

    def batches(dataset, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003  every pass over data goes through it
        if "certification=" in dataset.name:
            reads.append("in pass" if inside["pass"] else "elsewhere")
        return original_batches(dataset, *args, **kwargs)

    def counted_pass(models, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        passes.append(len(models))
        inside["pass"] = True
        try:
            return original_pass(models, *args, **kwargs)
        finally:
            inside["pass"] = False

    for module in list(sys.modules.values()):
        if getattr(module, "iterate_batches", None) is original_batches:
            monkeypatch.setattr(module, "iterate_batches", batches)
    monkeypatch.setattr(improve_module, "certification_pass", counted_pass)
    before = _files(zoo["student"])
    cli_out = tmp_path / "cli"
    assert main(["improve", "--student", zoo["student"], "--zoo", zoo["teacher"], zoo["harmful"], "--unlabelled",
                 *FAST, "--out", str(cli_out)]) == 0
    printed = capsys.readouterr().out
    decision = _decision(cli_out)
    assert decision["accepted"], decision["summary"]
    assert passes == [2] and reads and set(reads) == {"in pass"}  # the original and the chosen one, once
    cert = decision["certificate"]
    assert cert["lower_bound"] > 0 and cert["p_value"] < 0.05 and cert["turned_right"] > cert["turned_wrong"]
    assert decision["teachers"] == [zoo["teacher"]] and zoo["harmful"] not in decision["teachers"]
    ranking = {r["spec"]: r for r in decision["ranking"]}
    assert ranking[zoo["teacher"]]["kept"] and not ranking[zoo["harmful"]]["kept"]
    assert all(c["teachers"] != zoo["harmful"] for c in decision["candidates"])
    assert any(c["method"] == "mutual-unsup" for c in decision["candidates"])  # stage 2 tries Bi-KD too
    assert decision["model"] and Path(decision["model"].removeprefix("file:") + ".safetensors").is_file()
    assert _files(zoo["student"]) == before  # the student's own file is never written
    run = Path(decision["run_dir"])
    for name in ("candidates.csv", "teachers.csv", "certification_classes.csv", "report.html", "report.md"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert report.index("## Findings") < report.index("candidates.csv") and "accepted" in report
    assert "not complete" not in report and "accepted:" in printed
    improved = gkt.improve  # the Python door: same options, same decision
    api = improved(zoo["student"], [zoo["teacher"], zoo["harmful"]], unlabelled=True, out=tmp_path / "api",
                   say=lambda _: None, **FAST_API)
    assert api.to_dict() == {**decision, "run_dir": api.run_dir, "model": api.model, "seconds": api.seconds,
                             "candidates": api.candidates, "chosen": api.chosen}
    strip = [{k: v for k, v in c.items() if k != "checkpoint"} for c in decision["candidates"]]
    assert [{k: v for k, v in c.items() if k != "checkpoint"} for c in api.candidates] == strip
    assert (tmp_path / "api").joinpath(Path(api.run_dir).name, "decision.json").is_file()


def test_refusal_leaves_the_student_untouched(zoo: dict[str, str], tmp_path: Path) -> None:
    before = _files(zoo["student"])
    randoms = []
    for seed in (1, 2):  # random-init teachers: no knowledge
        torch.manual_seed(seed)
        model = Classifier.create(ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [32]}),
                                  Preprocess(14, 1, (0.286,), (0.353,)), load_split("fmnist", "test").class_names)
        randoms.append(f"file:{save_checkpoint(model, tmp_path / f'random{seed}')}")
    assert main(["improve", "--student", zoo["student"], "--zoo", *randoms, "--unlabelled", *FAST,
                 "--out", str(tmp_path / "out")]) == 0
    decision = _decision(tmp_path / "out")
    assert not decision["accepted"] and decision["model"] is None
    assert all(c["teachers"] in randoms for c in decision["candidates"])  # no cross-entropy control unlabelled
    assert "no certified improvement" in decision["summary"]
    assert _files(zoo["student"]) == before
    assert not (Path(decision["run_dir"]) / "model.safetensors").exists()


def test_a_harmful_teacher_is_never_accepted(zoo: dict[str, str], tmp_path: Path) -> None:
    """With labels the cross-entropy control may win; the harmful teacher never does."""
    before = _files(zoo["student"])
    assert main(["improve", "--student", zoo["student"], "--zoo", zoo["harmful"], *FAST, "--max-teachers", "1",
                 "--out", str(tmp_path)]) == 0
    decision = _decision(tmp_path)
    assert zoo["harmful"] not in decision["teachers"]
    assert not decision["ranking"][0]["kept"]
    if decision["accepted"]:
        assert decision["chosen"]["method"] == "ce" and "cross-entropy" in decision["summary"]
    assert _files(zoo["student"]) == before


def test_options_are_checked() -> None:
    with pytest.raises(GktError, match="--risk"):
        ImproveConfig(risk=1.5)
    with pytest.raises(GktError, match="--held-out"):
        ImproveConfig(held_out="train")
    assert main(["improve", "--student", "zoo:mlp"]) == 2


def test_resume_after_kill_gives_the_same_decision(zoo: dict[str, str], tmp_path: Path) -> None:
    args = ["improve", "--student", zoo["student"], "--zoo", zoo["teacher"], "--unlabelled", *FAST,
            "--lrs", "0.003", "0.01", "0.03", "0.1"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = _decision(tmp_path / "whole")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "gkt", *args, "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        store = None
        while time.monotonic() < deadline and proc.poll() is None:
            store = next((tmp_path / "killed").glob("improve-*/results.sqlite"), None)
            if store is not None:
                with sqlite3.connect(store) as db:
                    if db.execute("SELECT count(*) FROM results WHERE status = 'done'").fetchone()[0] >= 1:
                        break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    (killed,) = (tmp_path / "killed").glob("improve-*")
    assert not (killed / "decision.json").exists()
    assert main(["improve", "--resume", str(killed), "--out", str(tmp_path / "resumed")]) == 0
    resumed = _decision(tmp_path / "resumed")
    keys = ("accepted", "teachers", "certificate", "ranking", "splits", "summary")
    assert {k: resumed[k] for k in keys} == {k: whole[k] for k in keys}
    scores = [(c["teachers"], c["lr"], c["epochs"], c["selection_acc"]) for c in resumed["candidates"]]
    assert scores == [(c["teachers"], c["lr"], c["epochs"], c["selection_acc"]) for c in whole["candidates"]]


def test_hub_models_over_a_folder(offline_hubs, tmp_path: Path) -> None:  # noqa: ANN001
    """timm and transformers models from the hubs' caches, an image folder named by WordNet ids: the whole
    path runs (ranking, the control's transfers, selection, certification or a refusal); an accepted timm
    model is also written in timm's format."""
    from gkt.experiments.improve import write_model
    from gkt.models import DataInfo, load_model

    data = f"folder:{offline_hubs.folder.parent}"
    student = "timm:test_resnet.r160_in1k"
    assert main(["improve", "--student", student, "--zoo", "timm:test_efficientnet.r160_in1k",
                 "hf:gkt-tests/tiny-vit", "--data", data, "--batch-size", "8", "--lrs", "0.01", "--budget", "2",
                 "--threads", "2", "--out", str(tmp_path / "runs")]) == 0
    decision = _decision(tmp_path / "runs")
    assert decision["splits"]["selection"] + decision["splits"]["certification"] == 30
    assert {r["spec"] for r in decision["ranking"]} == {"timm:test_efficientnet.r160_in1k", "hf:gkt-tests/tiny-vit"}
    assert decision["candidates"] and all(c["error"] is None for c in decision["candidates"])
    info = DataInfo.from_dataset(load_split(data, "test"))
    model = load_model(student, info, class_map="auto")
    spec, export = write_model(model, tmp_path / "accepted", lambda _: None)
    assert spec.startswith("file:") and export["format"] == "timm" and Path(export["path"], "config.json").is_file()
