"""One pass over encoded images runs every model of an analysis; precision and skipped images in the
prediction store; the run-time note on top-k teacher targets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import gkt.data.datasets as datasets_module
from gkt.data.decode import reset_skipped
from gkt.data.folder import load_image_folder
from gkt.engine.outputs_cache import CachedOutputs
from gkt.engine.predictions import get_many, predict_many
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.preprocess import Preprocess
from tests.data.test_decode import write_jpeg_folder


def rgb_mlp(seed: int, classes: list[str], size: int = 12, crop_pct: float = 1.0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier.create(ArchSpec("zoo", "mlp", len(classes), 3, size, {"hidden": [8]}),
                             Preprocess(size, 3, (0.5,) * 3, (0.25,) * 3, crop_pct=crop_pct), classes,
                             name=f"mlp{seed}")


def test_every_model_of_a_pass_shares_one_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_jpeg_folder(tmp_path / "val", {"a": 4, "b": 3})
    ds = load_image_folder(root, image_size=14)
    calls = []
    decode = datasets_module.EncodedImageDataset.decode
    monkeypatch.setattr(datasets_module.EncodedImageDataset, "decode", lambda self, i: calls.append(i) or decode(self, i))
    models = [rgb_mlp(0, ["a", "b"]), rgb_mlp(1, ["a", "b"], size=10, crop_pct=0.875), rgb_mlp(2, ["a", "b"])]
    preds = get_many(models, ds, torch.device("cpu"), batch_size=3, workers=0)
    assert sorted(calls) == list(range(7))  # each image decoded once for the three models
    assert [len(p) for p in preds] == [7, 7, 7] and not any(p.from_store for p in preds)
    for model, p in zip(models, preds):  # the same as running each model alone on the decoded batch
        x = torch.stack([decode(ds, i) for i in range(7)])
        assert torch.allclose(p.logits, model(x), atol=1e-5)
    calls.clear()
    again = get_many(models, ds, torch.device("cpu"), workers=0)
    assert not calls and all(p.from_store for p in again)
    bf16 = get_many(models[:1], ds, torch.device("cpu"), precision="bf16", workers=0)[0]
    assert not bf16.from_store and bf16.key != preds[0].key  # reduced precision is stored apart


def test_skipped_images_leave_predictions_for_the_rest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_jpeg_folder(tmp_path / "val", {"a": 3, "b": 3}, truncated="b/broken.jpg")
    ds = load_image_folder(root, image_size=12, bad_images="skip")
    model = rgb_mlp(0, ["a", "b"])
    with caplog.at_level(logging.WARNING, logger="gkt"):
        (preds,) = get_many([model], ds, torch.device("cpu"), workers=1)
    assert "skipping unreadable image" in caplog.text
    assert len(preds) == 6 and torch.equal(preds.labels, ds.labels)
    reset_skipped()
    relisted = load_image_folder(root, image_size=12, bad_images="skip")  # known bad: left out when listed
    (stored,) = get_many([model], relisted, torch.device("cpu"), workers=1)
    assert stored.from_store and stored.key == preds.key


def test_sparse_teacher_targets_are_announced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Building the cache of a large label space says what it keeps and its bytes per sample."""
    classes = [f"c{i}" for i in range(120)]
    data = datasets_module.TensorImageDataset("many", torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8),
                                              torch.arange(6), classes)
    with caplog.at_level(logging.INFO, logger="gkt.engine.outputs_cache"):
        cache = CachedOutputs(rgb_mlp(0, classes), data, torch.device("cpu"), labels_allowed=False)
    assert "120 classes" in caplog.text and "unbiased" in caplog.text and "built" in caplog.text
    assert f"{cache.bytes_per_sample} bytes per sample" in caplog.text and cache.bytes_per_sample < 4 * 120


def test_models_with_one_preprocessing_share_its_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model and its random-init baseline (same preprocessing) resize and normalise each batch once."""
    data = datasets_module.TensorImageDataset("six", torch.randint(0, 256, (6, 3, 14, 14), dtype=torch.uint8),
                                              torch.arange(6) % 2, ["a", "b"])
    models = [rgb_mlp(0, ["a", "b"]), rgb_mlp(1, ["a", "b"], size=10, crop_pct=0.875), rgb_mlp(2, ["a", "b"])]
    calls = []
    normalize = Classifier.normalize
    monkeypatch.setattr(Classifier, "normalize", lambda self, x: calls.append(self.name) or normalize(self, x))
    preds = predict_many(models, data, torch.device("cpu"), batch_size=3)
    assert calls == ["mlp0", "mlp1"] * 2  # two batches, two distinct preprocessings
    monkeypatch.setattr(Classifier, "normalize", normalize)
    for model, p in zip(models, preds):
        assert torch.allclose(p.logits, model(data.images), atol=1e-6)
