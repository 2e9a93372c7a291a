"""Each model's own eval transform: on the same folder, gkt's predictions (one pass, each image decoded once,
every model given its own view) equal those of the library's own transform pipeline on PIL images (timm
``create_transform``, torchvision ``weights.transforms()``, the transformers image processor) on at least 99%
of images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gkt.data.spec import load_split
from gkt.engine.loop import predict_logits
from gkt.engine.predictions import predict_many
from gkt.models import Classifier, load_model
from gkt.models.preprocess import decode_plan_for, decode_size_for
from tests.hubs import HF_MODEL, TIMM_MODELS, TORCHVISION_MODEL, HubCaches, confident_head


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smooth, structured photos-like JPEGs of many sizes and aspect ratios (an ImageNet-layout val split)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / "val" / f"c{c}").mkdir(parents=True)
        (root / "train" / f"c{c}").mkdir(parents=True)
        for i in range(25):
            h, w = int(rng.integers(120, 400)), int(rng.integers(120, 400))
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            freq = rng.uniform(2, 12, 3)
            phase = rng.uniform(0, 6.3, 3)
            img = np.stack([np.sin(freq[k] * (xx * np.cos(phase[k]) + yy * np.sin(phase[k])) * 6.3 + phase[k])
                            for k in range(3)], -1)
            img = (img * 90 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "val" / f"c{c}" / f"{i}.jpg", quality=92)
        Image.fromarray(img).save(root / "train" / f"c{c}" / "0.jpg")
    return root


def library_timm(model: Classifier) -> Callable:
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(model=model.net.model))


def library_torchvision(model: Classifier) -> Callable:
    import torchvision

    arch, weights = TORCHVISION_MODEL
    return torchvision.models.get_model_weights(arch)[weights].transforms()


def library_transformers(model: Classifier) -> Callable:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(HF_MODEL)
    return lambda img: processor(img, return_tensors="pt")["pixel_values"][0]


CASES = {f"timm:{TIMM_MODELS[0]}": library_timm,
         f"torchvision:{TORCHVISION_MODEL[0]}?weights={TORCHVISION_MODEL[1]}": library_torchvision,
         f"hf:{HF_MODEL}": library_transformers}


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return (ours == theirs).double().mean().item()


def test_predictions_match_the_library_pipelines(offline_hubs: HubCaches, photo_folder: Path) -> None:
    """Three models of three libraries in one pass: each image decoded once, each model given its own view;
    every model's predictions equal those of its library's pipeline on PIL images."""
    from PIL import Image

    folder = load_split(f"folder:{photo_folder}", "val")
    models, theirs = [], []
    for spec, library in CASES.items():
        model = load_model(spec).eval()
        transform = library(model)
        with torch.no_grad():
            batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in folder.files])
        confident_head(model, batch)
        with torch.no_grad():
            logits = model.net(batch)  # the library's own module (wrapped for its logits), same weights
        assert len(logits.argmax(1).unique()) >= 3, f"{spec}: predictions must vary between images"
        assert logits.softmax(1).amax(1).median() > 0.5, f"{spec}: predictions must be confident"
        models.append(model)
        theirs.append(logits.argmax(1))
    dataset = folder.at_decode_plan(decode_plan_for(m.preprocess for m in models))
    assert len(dataset.decode_plan) == 3
    ours = predict_many(models, dataset, torch.device("cpu"), batch_size=50, workers=0)
    rates = {spec: agreement(p.predicted, t) for spec, p, t in zip(CASES, ours, theirs)}
    # One plain square decode shared by all (the training path), for comparison: close, not exact.
    square = predict_many(models, folder.at_decode_size(decode_size_for(m.preprocess for m in models)),
                          torch.device("cpu"), batch_size=50, workers=0)
    print("agreement with the library pipelines, own views:", {k: f"{100 * v:.1f}%" for k, v in rates.items()},
          "one square decode:",
          {k: f"{100 * agreement(p.predicted, t):.1f}%" for k, p, t in zip(CASES, square, theirs)})
    assert min(rates.values()) >= 0.99, f"gkt agrees with the libraries' pipelines on {rates} of images"
    # The evaluation path of `gkt transfer` (one model at a time over the same planned test set) gives each
    # model the same view, so a transfer's before/after accuracies are the analysis's.
    for model, preds in zip(models, ours):
        assert torch.equal(predict_logits(model, dataset, torch.device("cpu"), batch_size=50).argmax(1), preds.predicted)
