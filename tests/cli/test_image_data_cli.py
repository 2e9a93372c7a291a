"""The CLI on encoded image data: a Hugging Face ``save_to_disk`` directory (offline) and an image folder
with a truncated JPEG (``--bad-images``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gkt.cli import main
from gkt.core.io import read_json
from gkt.models.checkpoint import save_checkpoint
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.preprocess import Preprocess
from tests.data.test_decode import write_jpeg_folder

CLASSES = ["cat", "dog", "owl"]


def rgb_model(path: Path, seed: int, classes: list[str] = CLASSES) -> str:
    """A small random RGB MLP (16 px input, timm-style crop_pct) saved as a ``file:`` checkpoint."""
    torch.manual_seed(seed)
    model = Classifier.create(ArchSpec("zoo", "mlp", len(classes), 3, 16, {"hidden": [8]}),
                              Preprocess(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_pct=0.875), classes)
    save_checkpoint(model, path)
    return f"file:{path}"


def hf_dir(path: Path, n_train: int = 24, n_val: int = 12) -> Path:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})

    def split(n: int) -> object:
        images = [Image.fromarray(rng.integers(0, 255, (20 + i % 5, 24, 3), dtype=np.uint8)) for i in range(n)]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)

    datasets.DatasetDict({"train": split(n_train), "validation": split(n_val)}).save_to_disk(str(path))
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_analyze_and_transfer_on_a_saved_hf_dataset(tmp_path: Path, offline: None,
                                                    capsys: pytest.CaptureFixture) -> None:
    data = f"hf:{hf_dir(tmp_path / 'hfds')}"
    a, b = rgb_model(tmp_path / "a", 0), rgb_model(tmp_path / "b", 1)
    out = tmp_path / "runs"
    code = main(["analyze", "--models", a, b, "--data", data, "--split", "test", "--no-semantic", "--no-figures",
                 "--batch-size", "5", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = read_json(next(out.glob("analyze-*")) / "summary.json")
    assert summary["samples"] == 12 and summary["classes"] == 3
    code = main(["transfer", "--student", a, "--teacher", b, "--data", data, "--epochs", "1", "--batch-size", "8", "--fraction", "1",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    final = read_json(next(out.glob("transfer-*")) / "final.json")
    assert 0 <= final["acc"] <= 1


def test_truncated_jpeg_fails_naming_it_or_is_skipped_and_counted(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "imgs"
    write_jpeg_folder(root / "train", {c: 4 for c in CLASSES})
    write_jpeg_folder(root / "val", {c: 3 for c in CLASSES}, truncated="dog/broken.jpg")
    a, b = rgb_model(tmp_path / "a", 0), rgb_model(tmp_path / "b", 1)
    args = ["analyze", "--models", a, b, "--data", f"folder:{root}", "--split", "test", "--no-semantic",
            "--no-figures", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(args + ["--bad-images", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in out and "broken.jpg" in out
    run = sorted((tmp_path / "runs").glob("analyze-*"))[-1]
    assert read_json(run / "summary.json")["samples"] == 9
    assert list(read_json(run / "skipped_images.json")) == [str(root / "val" / "dog" / "broken.jpg")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.jpg: unreadable image" in err and "--bad-images skip" in err and "Traceback" not in err


def test_truncated_jpeg_found_by_the_pass_itself(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """When no pixel statistics are decoded first, the analysis pass is where it is found."""
    from gkt.data.folder import FolderImageDataset

    monkeypatch.setattr(FolderImageDataset, "pixel_stats", lambda self, max_samples=256: ((0.5,) * 3, (0.25,) * 3))
    root = tmp_path / "imgs"
    write_jpeg_folder(root / "train", {c: 2 for c in CLASSES})
    write_jpeg_folder(root / "val", {c: 5 for c in CLASSES}, truncated="owl/3x.jpg")
    a, b = rgb_model(tmp_path / "a", 0), rgb_model(tmp_path / "b", 1)
    args = ["analyze", "--models", a, b, "--data", f"folder:{root}", "--split", "test", "--no-semantic",
            "--no-figures", "--no-random-baseline", "--batch-size", "4", "--out", str(tmp_path / "runs"),
            "--device", "cpu"]
    assert main(args + ["--bad-images", "skip"]) == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().out
    assert read_json(sorted((tmp_path / "runs").glob("analyze-*"))[-1] / "summary.json")["samples"] == 15
