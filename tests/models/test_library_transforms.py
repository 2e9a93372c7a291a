"""Each model's own eval transform: on the same folder, gkt's predictions equal those of the library's own
transform pipeline (timm ``create_transform``, torchvision ``weights.transforms()``, the transformers image
processor) on at least 99% of images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gkt.data.spec import load_split
from gkt.engine.predictions import compute_predictions
from gkt.models import Classifier, load_model
from gkt.models.preprocess import decode_size_for
from tests.hubs import HF_MODEL, TIMM_MODELS, TORCHVISION_MODEL, HubCaches


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


@torch.no_grad()
def spread_head(model: Classifier, images: torch.Tensor) -> None:
    """Random-init networks predict one class for every image; a head on whitened features (fixed seed)
    makes their predictions depend on the image, so the comparison below can fail."""
    head = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.num_classes][-1]
    features = model.features(images)
    torch.manual_seed(0)
    weight = torch.randn(head.out_features, features.shape[1]) / features.std(0).clamp_min(1e-6)
    head.weight.copy_(weight)
    head.bias.copy_(-(weight @ features.mean(0)))


# Measured with the decode of issue 18 (one decode per pass at decode_size_for, then adapt_layout): 86% (timm),
# 90% (torchvision), 76% (transformers). The decode differs from the libraries' pipelines: it decodes at
# ceil(input / crop_pct) where timm, torchvision and the processors resize to floor(input / crop_pct) (an extra
# resample, e.g. 169 -> 168), its square crop before the model's crop shifts odd-sized images by one pixel
# against the libraries' single centre crop, and it resizes tensors where the libraries resize PIL images.
# Strict: once the decode matches, these pass and the mark must go.
@pytest.mark.xfail(strict=True, reason="the pass decode does not yet reproduce the libraries' resize/crop rounding")
@pytest.mark.parametrize("spec", list(CASES))
def test_predictions_match_the_library_pipeline(spec: str, offline_hubs: HubCaches, photo_folder: Path) -> None:
    from PIL import Image

    model = load_model(spec)
    # decoded once at the pass's decode size, then resized and cropped by the model's own transform
    dataset = load_split(f"folder:{photo_folder}", "val").at_decode_size(decode_size_for([model.preprocess]))
    spread_head(model, dataset.load(torch.arange(len(dataset))))
    ours = compute_predictions(model, dataset, torch.device("cpu"), batch_size=50).predicted
    transform = CASES[spec](model)
    library_net = model.net  # the library's own module (wrapped for its logits), same weights
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in dataset.files])
        theirs = library_net(batch).argmax(1)
    assert len(theirs.unique()) >= 3, "the check needs models whose predictions vary between images"
    agreement = (ours == theirs).float().mean().item()
    assert agreement >= 0.99, f"{spec}: gkt agrees with the library's pipeline on {100 * agreement:.1f}% of images"
