"""Random-init models stored exactly as the hubs store them, and an ImageNet-layout folder, for offline tests:
timm ``save_for_hf`` into Hugging Face hub snapshots, a transformers ``save_pretrained`` snapshot, and a
torchvision state dict in the torch hub cache under the file name its weights enum expects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from gkt.models import Classifier

# Imagenette's classes (WordNet ids, the folder names of an ImageNet-layout data set).
IMAGENETTE = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
              "n03425413", "n03445777", "n03888605")
TIMM_MODELS = ("test_resnet.r160_in1k", "test_efficientnet.r160_in1k")
HF_MODEL = "gkt-tests/tiny-vit"
TORCHVISION_MODEL = ("mobilenet_v3_small", "IMAGENET1K_V1")


@dataclass(frozen=True)
class HubCaches:
    hf_home: Path
    torch_home: Path
    folder: Path  # an ImageNet-layout split: folder/<wnid>/<image>
    class_map: Path  # {wnid: torchvision class name}


def hub_snapshot(hf_home: Path, repo_id: str, revision: str) -> Path:
    """The snapshot directory of ``repo_id`` at ``revision``, made the cache's ``main``."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def save_timm_snapshot(hf_home: Path, name: str, seed: int) -> Path:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    snapshot = hub_snapshot(hf_home, f"timm/{name}", f"{seed:040x}")
    save_for_hf(model, snapshot)
    return snapshot


def save_hf_snapshot(hf_home: Path, repo_id: str, seed: int = 0) -> Path:
    """A tiny random ViT with ImageNet-1k labels (Hugging Face's descriptions) and a centre-cropping image
    processor (ConvNeXt's: shorter side to 32 / 0.875, then the centre 32×32)."""
    from timm.data import ImageNetInfo
    from transformers import ConvNextImageProcessor, ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    labels = ImageNetInfo("imagenet-1k").label_descriptions()
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, id2label=dict(enumerate(labels)),
                       label2id={n: i for i, n in enumerate(labels)})
    snapshot = hub_snapshot(hf_home, repo_id, f"{seed + 1:040x}")
    ViTForImageClassification(config).save_pretrained(snapshot)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                           resample=2).save_pretrained(snapshot)
    return snapshot


def save_torchvision_checkpoint(torch_home: Path, arch: str, weights: str, seed: int = 0) -> Path:
    import torchvision

    enum = torchvision.models.get_model_weights(arch)[weights]
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(enum.meta["categories"]))
    path = torch_home / "hub" / "checkpoints" / Path(enum.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def image_folder(root: Path, classes: tuple[str, ...] = IMAGENETTE, per_class: int = 3, seed: int = 0) -> Path:
    """JPEGs of mixed sizes and aspect ratios, one sub-folder per class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            base = rng.integers(0, 256, (1, 1, 3))
            noise = rng.normal(0, 40, (h, w, 3))
            pixels = np.clip(base + noise + np.linspace(0, 60 * (c % 3), w)[None, :, None], 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i}.jpg", quality=90)
    return root


def confident_head(model: Classifier, inputs: torch.Tensor, steps: int = 60) -> None:
    """Give a random-init network confident predictions that depend on the image: a head on whitened
    features (fixed seed), then a few steps of self-training (cross-entropy on its own predictions) that
    widen each image's margin between its top two classes; ``inputs`` are the network's normalised inputs."""
    head = [m for m in model.net.modules()
            if isinstance(m, torch.nn.Linear) and m.out_features == model.num_classes][-1]
    with torch.no_grad():
        features = model.net.forward_features(inputs)
    mean, std = features.mean(0), features.std(0)
    std = std.clamp_min(std.max() * 1e-6)  # random-init activations can be tiny (1e-10): a relative floor
    z = (features - mean) / std
    torch.manual_seed(0)
    weight = torch.randn(head.out_features, z.shape[1]).requires_grad_()
    bias = torch.zeros(head.out_features, requires_grad=True)
    with torch.no_grad():
        targets = (z @ weight.T).argmax(1)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(z @ weight.T + bias, targets).backward()
        optimizer.step()
    with torch.no_grad():
        head.weight.copy_(weight / std)
        head.bias.copy_(bias - (weight / std) @ mean)


@pytest.fixture(scope="session")
def hub_caches(tmp_path_factory: pytest.TempPathFactory) -> HubCaches:
    from timm.data import ImageNetInfo
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    root = tmp_path_factory.mktemp("hubs")
    hf_home, torch_home = root / "hf", root / "torch"
    for seed, name in enumerate(TIMM_MODELS):
        save_timm_snapshot(hf_home, name, seed)
    save_hf_snapshot(hf_home, HF_MODEL)
    save_torchvision_checkpoint(torch_home, *TORCHVISION_MODEL)
    folder = image_folder(root / "imagenette" / "val")
    image_folder(root / "imagenette" / "train", seed=1)
    wnids = ImageNetInfo("imagenet-1k").label_names()
    class_map = root / "imagenette_map.json"
    class_map.write_text(json.dumps({w: _IMAGENET_CATEGORIES[wnids.index(w)] for w in IMAGENETTE}))
    return HubCaches(hf_home, torch_home, folder, class_map)


@pytest.fixture
def offline_hubs(hub_caches: HubCaches, monkeypatch: pytest.MonkeyPatch) -> HubCaches:
    """The hub caches as this process's (and its children's) Hugging Face and torch homes, offline."""
    import huggingface_hub.constants as hf_constants

    env = {"HF_HOME": hub_caches.hf_home, "HF_HUB_CACHE": hub_caches.hf_home / "hub",
           "TORCH_HOME": hub_caches.torch_home, "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hub_caches.hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_caches.hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    # its torchvision file holds random weights under the official name, whose hash it cannot match
    monkeypatch.setattr("gkt.models.torchvision_source.verify_torch_hub_file", lambda path, what: None)
    return hub_caches
