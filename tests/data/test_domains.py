"""Shifted domains: deterministic class-preserving transforms, the BASE@DOMAIN data spec, domain
teachers and the ``gkt crossdomain`` verb end to end on tiny data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, write_idx

from gkt.adapt.domains import DomainFinetune, domain_teacher
from gkt.cli import main
from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.data.domains import DOMAINS, apply_domain, transform_images
from gkt.data.spec import DataSpec, load_split
from gkt.engine.loop import train_supervised
from gkt.models import ArchSpec, Classifier, Preprocess, save_checkpoint


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_transform_is_deterministic_and_keeps_shape(name: str) -> None:
    images = make_blobs(n_per_class=8, size=16, channels=3).images
    first = transform_images(images.clone(), name)
    torch.set_num_threads(1)
    second = transform_images(images.clone(), name)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert first.numpy().tobytes() == second.numpy().tobytes()
    assert not torch.equal(first, images)


def test_transforms_behave_as_documented() -> None:
    flat = torch.full((2, 1, 8, 8), 90, dtype=torch.uint8)
    step = flat.clone()
    step[:, :, :, 4:] = 200
    edges = transform_images(step, "edges")
    assert edges.amax((1, 2, 3)).tolist() == [255, 255]  # each image rescaled to a maximum of 255
    assert edges[:, :, 2:6, 3:5].min() > 0 and edges[:, :, 2:6, 1:3].max() == 0  # inside: only at the step
    assert torch.equal(transform_images(transform_images(step, "invert"), "invert"), step)
    blurred = transform_images(torch.full((1, 1, 16, 16), 90, dtype=torch.uint8), "blur")
    assert (blurred[..., 4:12, 4:12] == 90).all() and blurred[0, 0, 0, 0] < 90  # exact inside; zero padding


def test_apply_domain_keeps_labels_and_renames(blobs) -> None:
    shifted = apply_domain(blobs, "edges")
    assert torch.equal(shifted.labels, blobs.labels) and shifted.class_names == blobs.class_names
    assert shifted.name == "blobs@edges" and shifted.fingerprint() != blobs.fingerprint()
    assert torch.equal(shifted.load(torch.tensor([3, 1])), transform_images(blobs.images[[3, 1]], "edges"))
    with pytest.raises(GktError, match="unknown domain"):
        apply_domain(blobs, "sepia")


def test_domain_data_spec(tiny_fmnist_dir: Path) -> None:
    assert DataSpec.parse("fmnist@edges") == DataSpec("fmnist", None, "edges")
    assert DataSpec.parse("digits@invert").kind == "digits"
    with pytest.raises(GktError, match="BASE@DOMAIN"):
        DataSpec.parse("@edges")
    base = load_split("fmnist", "train", data_dir=str(tiny_fmnist_dir), val_fraction=0.2, seed=1)
    shifted = load_split("fmnist@invert", "train", data_dir=str(tiny_fmnist_dir), val_fraction=0.2, seed=1)
    assert torch.equal(shifted.labels, base.labels) and torch.equal(shifted.images, 255 - base.images)
    assert shifted.name.endswith("@invert")


@pytest.fixture
def blob_fmnist_dir(tmp_path: Path) -> Path:
    """Fashion-MNIST file names holding a learnable 10-class blob dataset (200 train, 100 test images)."""
    d = tmp_path / "blob-fmnist"
    d.mkdir()
    for split, n, seed in (("train", 20, 0), ("t10k", 10, 1)):
        blobs = make_blobs(n, 10, size=28, seed=seed)
        write_idx(d / f"{split}-images-idx3-ubyte.gz", blobs.images[:, 0].numpy())
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", blobs.labels.numpy())
    return d


def _tiny_model(tmp_path: Path, name: str, data, epochs: int = 0) -> str:
    arch = ArchSpec("zoo", "mlp", data.num_classes, 1, 14, {"hidden": [16]})
    torch.manual_seed(len(name))
    model = Classifier.create(arch, Preprocess(14, 1, (0.3,), (0.3,)), data.class_names, provenance={"family": "mlp"})
    if epochs:
        train_supervised(model, data, Recipe(epochs, "sgd", 0.05, 0.0, 16, seed=len(name)), torch.device("cpu"))
    return f"file:{save_checkpoint(model, tmp_path / name).with_suffix('')}"


def test_domain_teacher_is_cached(tiny_fmnist_dir: Path, tmp_path: Path) -> None:
    data = load_split("fmnist", "test", data_dir=str(tiny_fmnist_dir))
    spec = _tiny_model(tmp_path, "t", data)
    cfg = DomainFinetune(recipe=Recipe(epochs=1, optimizer="adamw", lr=1e-3, batch_size=8))
    teacher, record = domain_teacher(spec, "fmnist@edges", cfg, torch.device("cpu"), str(tiny_fmnist_dir))
    assert not record["cached"] and set(record) >= {"acc_orig_before", "acc_orig_after", "acc_domain_after"}
    again, cached = domain_teacher(spec, "fmnist@edges", cfg, torch.device("cpu"), str(tiny_fmnist_dir))
    assert again == teacher and cached["cached"] and cached["acc_orig_after"] == record["acc_orig_after"]
    with pytest.raises(GktError, match="not a shifted domain"):
        domain_teacher(spec, "fmnist", cfg, torch.device("cpu"), str(tiny_fmnist_dir))


def test_crossdomain_cli_end_to_end(blob_fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = load_split("fmnist", "train", data_dir=str(blob_fmnist_dir), val_fraction=0)
    students = [_tiny_model(tmp_path, n, data, epochs) for n, epochs in (("s1", 1), ("s22", 3))]
    teacher = _tiny_model(tmp_path, "t1", data, 3)
    args = ["crossdomain", "--domain", "edges", "--teachers", teacher, "--students", *students,
            "--methods", "kl", "kl-dp", "--seeds", "0", "1", "--epochs", "1", "--fraction", "1", "--batch-size", "8",
            "--ft-epochs", "1", "--ft-batch-size", "8", "--data-dir", str(blob_fmnist_dir), "--out", str(tmp_path),
            "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "8 transfer jobs: 0 already done, 8 ran, 0 failed" in out
    run = next(tmp_path.glob("crossdomain-*"))
    for name in ("results.sqlite", "domain_teachers.csv", "by_method.csv", "pairs.csv",
                 "fig10_crossdomain_delta_transf_vs_delta_acc.png"):
        assert (run / name).is_file(), name
    with open(run / "by_method.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == ["kl", "kl-dp"] and {r["seeds"] for r in rows} == {"2"}
    with open(run / "pairs.csv") as f:
        assert {r["teacher"] for r in csv.DictReader(f)} == {f"{teacher}@edges"}
    assert main(["report", str(run), "--out", str(tmp_path)]) == 0
    assert "fig10_crossdomain_delta_transf_vs_delta_acc.png" in (run / "report.md").read_text()
    assert main([*args[:args.index("--data-dir")], "--data", "fmnist@invert", *args[args.index("--data-dir"):]]) == 2
    assert "give the original data, without @invert; the teachers' shifted domain is --domain" in capsys.readouterr().err
