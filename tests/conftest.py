"""Shared fixtures: tiny IDX files, synthetic learnable datasets, an isolated gkt cache."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gkt.data.datasets import TensorImageDataset
from gkt.data.fmnist import FASHION_MNIST_CLASSES
from gkt.models import ArchSpec, Classifier, Preprocess, save_checkpoint
from tests.hubs import hub_caches, offline_hubs  # noqa: F401  (fixtures: models in the hubs' own cache layouts)


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


def make_model(arch: str, seed: int, num_classes: int = 4, size: int = 12, **kwargs) -> Classifier:
    torch.manual_seed(seed)
    return Classifier.create(ArchSpec("zoo", arch, num_classes, 1, size, kwargs), Preprocess(size, 1, (0.3,), (0.3,)),
                             [f"class{c}" for c in range(num_classes)], name=f"{arch}-{seed}")


COMPARED = ("acc", "delta_transf", "knowledge_gain", "knowledge_loss", "acc_student_before", "acc_teacher")


def write_model(path: Path, seed: int, hidden: int = 16) -> str:
    """A small random MLP checkpoint with the Fashion-MNIST label names; returns its ``file:`` spec."""
    torch.manual_seed(seed)
    model = Classifier.create(ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [hidden]}),
                              Preprocess(14, 1, (0.5,), (0.3,)), FASHION_MNIST_CLASSES)
    save_checkpoint(model, path)
    return f"file:{path}"


def fmnist_dir(path: Path, n_train: int, n_test: int = 40, seed: int = 0) -> Path:
    """Fashion-MNIST-named IDX files with random contents (``n_train`` / ``n_test`` samples)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return path


def new_runs(out: Path, before: set[Path]) -> list[Path]:
    return sorted(set(out.iterdir()) - before)


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


def report_findings(run_dir: Path) -> list[str]:
    """``gkt report RUN_DIR``, checked as every verb's report must be: both files open with Findings, every
    figure is shown (inlined in the HTML, linked from the Markdown), no ``-0.00`` and no bare ``nan``;
    returns the Findings' sentences (Markdown-escaped)."""
    import re

    from gkt.cli import main

    assert main(["report", str(run_dir)]) == 0
    md, page = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert re.findall(r"^## (.+)$", md, re.M)[0] == "Findings", md[:500]
    assert re.findall(r"<h2>(.+?)</h2>", page)[0] == "Findings"
    pngs = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*.png"))
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert all(f"(<{p}>)" in md for p in pngs)
    body = md.split("## Configuration")[0]
    assert "-0.00" not in body and not re.search(r"\bnan\b", body)
    return [line[2:] for line in md.split("## Findings\n\n")[1].split("\n\n")[0].splitlines() if line.startswith("- ")]
