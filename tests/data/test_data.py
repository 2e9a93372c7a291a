from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx

from gkt.core.errors import GktError
from gkt.data import fmnist
from gkt.data.datasets import iterate_batches
from gkt.data.fmnist import (
    FASHION_MNIST_FILES,
    download_fashion_mnist,
    load_fashion_mnist,
    locate_fashion_mnist,
    read_idx,
)
from gkt.data.folder import load_image_folder
from gkt.data.spec import DataSpec, load_split
from gkt.data.subsets import stratified_indices, train_val_split
from tests.data.test_decode import write_jpeg_folder

# ----------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.gz" if compress else "a.idx"), array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(GktError, match="bad magic"):
        read_idx(path)


def test_idx_truncated(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t.idx", np.zeros((5, 4, 4)), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(GktError, match="truncated"):
        read_idx(path)


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "c.gz", np.zeros((5, 4, 4)))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(GktError, match="corrupt or truncated"):
        read_idx(path)


def test_idx_checksum_mismatch(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.zeros((2, 2)))
    with pytest.raises(GktError, match="checksum"):
        read_idx(path, sha256="0" * 64)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GktError, match="not found"):
        read_idx(tmp_path / "nope.gz")


# ----------------------------------------------------------------------------- Fashion-MNIST location


def test_locate_prefers_data_dir_then_env(tiny_fmnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_fmnist_dir, other)
    monkeypatch.setenv("GKT_DATA", str(other))
    assert locate_fashion_mnist(tiny_fmnist_dir, download=False) == tiny_fmnist_dir
    assert locate_fashion_mnist(None, download=False) == other


def test_tiny_fmnist_loads(tiny_fmnist_dir: Path) -> None:
    train = load_fashion_mnist("train", tiny_fmnist_dir)
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.class_names[0] == "T-shirt/top" and len(train.class_names) == 10
    assert load_fashion_mnist("test", tiny_fmnist_dir).labels.tolist() == [i % 10 for i in range(20)]


def test_label_image_count_mismatch(tiny_fmnist_dir: Path) -> None:
    write_idx(tiny_fmnist_dir / "train-labels-idx1-ubyte.gz", np.arange(29) % 10)
    with pytest.raises(GktError, match="30 images but 29 labels"):
        load_fashion_mnist("train", tiny_fmnist_dir)


def test_missing_dataset_error_names_apt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fmnist, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(GktError, match="apt-get install dataset-fashion-mnist") as info:
        locate_fashion_mnist(None, download=False)
    assert "--data-dir" in str(info.value)


def test_download_verifies_checksums_from_local_mirror(tmp_path: Path) -> None:
    source = fmnist.DEBIAN_FASHION_MNIST_DIR
    if not (source / FASHION_MNIST_FILES[("test", "labels")].name).is_file():
        pytest.skip("Debian dataset-fashion-mnist not installed")
    mirror = tmp_path / "mirror"
    shutil.copytree(source, mirror)
    target = download_fashion_mnist(tmp_path / "cache", base_url=mirror.as_uri() + "/")
    assert load_fashion_mnist("test", target).labels.shape == (10000,)


def test_download_rejects_tampered_file(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for spec in FASHION_MNIST_FILES.values():
        (mirror / spec.name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
    with pytest.raises(GktError, match="SHA-256"):
        download_fashion_mnist(tmp_path / "cache", base_url=mirror.as_uri() + "/")
    assert not list((tmp_path / "cache").glob("*.gz")), "a file that failed verification must not be kept"


def test_real_fashion_mnist_if_installed() -> None:
    try:
        test = load_fashion_mnist("test", download=False)
    except GktError:
        pytest.skip("Fashion-MNIST not installed")
    assert test.images.shape == (10000, 1, 28, 28)
    assert test.class_counts().tolist() == [1000] * 10


# ----------------------------------------------------------------------------- subsets and splits


def test_stratified_fraction_counts_and_seeds() -> None:
    labels = torch.arange(5).repeat_interleave(torch.tensor([100, 50, 20, 10, 3]))
    idx = stratified_indices(labels, fraction=0.1, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [10, 5, 2, 1, 1]  # at least one per class
    assert torch.equal(idx, stratified_indices(labels, fraction=0.1, seed=0))
    assert not torch.equal(idx, stratified_indices(labels, fraction=0.1, seed=1))
    assert len(set(idx.tolist())) == len(idx)


def test_stratified_per_class() -> None:
    labels = torch.arange(3).repeat(20)
    idx = stratified_indices(labels, per_class=7, seed=3)
    assert torch.bincount(labels[idx]).tolist() == [7, 7, 7]
    with pytest.raises(GktError, match="fewer than"):
        stratified_indices(labels, per_class=21)
    with pytest.raises(GktError, match="exactly one"):
        stratified_indices(labels, fraction=0.5, per_class=2)


def test_train_val_split_disjoint_and_stratified() -> None:
    labels = torch.arange(4).repeat(25)
    train, val = train_val_split(labels, 0.2, seed=1)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert len(train) + len(val) == 100
    assert torch.bincount(labels[val]).tolist() == [5, 5, 5, 5]


def test_load_split_val_from_fmnist(tiny_fmnist_dir: Path) -> None:
    train = load_split("fmnist", "train", data_dir=str(tiny_fmnist_dir), val_fraction=0.34, seed=0)
    val = load_split("fmnist", "val", data_dir=str(tiny_fmnist_dir), val_fraction=0.34, seed=0)
    assert len(train) + len(val) == 30 and len(val) == 10


def test_data_spec_errors() -> None:
    assert DataSpec.parse("fmnist") == DataSpec("fmnist")
    assert DataSpec.parse("folder:/x").path == "/x"
    with pytest.raises(GktError, match="unknown data spec"):
        DataSpec.parse("imagenet")


# ----------------------------------------------------------------------------- image folders


def _write_folder(root: Path, classes: dict[str, int], size: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_layout(tmp_path: Path) -> None:
    _write_folder(tmp_path / "ds" / "train", {"cat": 3, "dog": 2})
    _write_folder(tmp_path / "ds" / "val", {"cat": 1, "dog": 1})
    train = load_split("folder:" + str(tmp_path / "ds"), "train", val_fraction=0, image_size=8)
    assert train.class_names == ["cat", "dog"] and len(train) == 5
    batch = train.load(torch.tensor([0, 4]))
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.uint8
    test = load_split("folder:" + str(tmp_path / "ds"), "test", image_size=8)
    assert len(test) == 2 and test.class_names == ["cat", "dog"]
    images, labels, idx = next(iterate_batches(train, 4, workers=1))
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == train.labels[idx].tolist()
    # a shipped val/ leaves train whole whatever --val-fraction says; without one, val is carved from train
    assert len(load_split("folder:" + str(tmp_path / "ds"), "train", image_size=8)) == 5
    assert len(load_split("folder:" + str(tmp_path / "ds"), "val", image_size=8)) == 2
    _write_folder(tmp_path / "bare" / "train", {"cat": 10, "dog": 10})
    carved = [load_split("folder:" + str(tmp_path / "bare"), s, val_fraction=0.2, image_size=8) for s in ("train", "val")]
    assert [len(d) for d in carved] == [16, 4]


def test_image_folder_empty_class(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    with pytest.raises(GktError, match=r"\['b'\] contain no images"):
        load_image_folder(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(GktError, match="ImageNet-layout"):
        load_split(f"folder:{tmp_path}", "train")


def test_decoders_are_imported_before_workers_fork(tmp_path: Path) -> None:
    """The parent imports torchvision's decoders before starting decode workers: forked workers inherit them
    instead of each importing torchvision again (seconds per pass)."""
    root = write_jpeg_folder(tmp_path / "val", {"a": 2, "b": 2})
    script = (f"import sys\nfrom gkt.data.datasets import iterate_batches\nfrom gkt.data.folder import load_image_folder\n"
              f"ds = load_image_folder({str(root)!r}, image_size=8)\n"
              "assert 'torchvision.io' not in sys.modules\n"
              "assert sum(len(i) for _, _, i in iterate_batches(ds, 2, workers=1)) == 4\n"
              "print('torchvision.io' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "True"


def test_a_share_too_small_for_one_sample_per_class_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gkt.data.subsets import stratified_indices

    with caplog.at_level(logging.WARNING, logger="gkt"):
        rows = stratified_indices(torch.arange(100) % 50, fraction=0.1)  # 50 classes of 2 samples
    assert len(rows) == 50 and "subset has 50 samples, not about 10" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gkt"):
        assert len(stratified_indices(torch.arange(100) % 2, fraction=0.1)) == 10
    assert not caplog.text
