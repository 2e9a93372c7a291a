"""Shared fixtures: tiny IDX files, synthetic learnable datasets, an isolated gkt cache."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gkt.data import TensorImageDataset


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``compress``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def make_blobs(n_per_class: int = 40, num_classes: int = 4, size: int = 12, channels: int = 1, seed: int = 0,
               noise: float = 40.0) -> TensorImageDataset:
    """A learnable synthetic image dataset: each class is a square of its own brightness at its own
    position, plus noise (learnable by pixel-wise and by translation-invariant models)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    images = torch.randn(len(labels), channels, size, size, generator=g) * noise + 60
    half = size // 2
    for c in range(num_classes):
        r, col = (c // 2) % 2 * half, c % 2 * half
        images[labels == c, :, r:r + half, col:col + half] += 70 + 150 * c / max(1, num_classes - 1)
    return TensorImageDataset("blobs", images.clamp(0, 255).to(torch.uint8), labels,
                              [f"class{c}" for c in range(num_classes)])


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own GKT_HOME so caches never leak between tests or into ~/.cache."""
    home = tmp_path_factory.mktemp("gkt-home")
    monkeypatch.setenv("GKT_HOME", str(home))
    monkeypatch.delenv("GKT_DATA", raising=False)
    torch.set_num_threads(2)
    return home


@pytest.fixture
def blobs() -> TensorImageDataset:
    return make_blobs()


@pytest.fixture
def tiny_fmnist_dir(tmp_path: Path) -> Path:
    """A directory holding the four Fashion-MNIST file names with tiny random contents."""
    rng = np.random.default_rng(0)
    d = tmp_path / "fmnist"
    d.mkdir()
    for split, n in (("train", 30), ("t10k", 20)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return d
