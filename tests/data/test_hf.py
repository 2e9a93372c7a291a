"""Hugging Face datasets as data: content identity, one label space over splits, saved formats, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gkt.core.errors import GktError
from gkt.data.datasets import iterate_batches
from gkt.data.hf import HFImageDataset
from gkt.data.spec import load_split
from gkt.engine.predictions import dataset_identity

datasets = pytest.importorskip("datasets")
CLASSES = ["cat", "dog", "owl"]


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _split(n: int, names: list[str] = CLASSES, seed: int = 0) -> object:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": [{"bytes": _png(seed + i), "path": None} for i in range(n)],
                                       "label": [i % len(names) for i in range(n)]}, features=features)


def test_identity_follows_the_images_read(tmp_path: Path) -> None:
    # saved: re-saving with one image changed writes new Arrow files
    datasets.DatasetDict({"train": _split(6), "test": _split(3)}).save_to_disk(str(tmp_path / "saved"))
    before = dataset_identity(load_split(f"hf:{tmp_path / 'saved'}", "test", image_size=8))
    assert dataset_identity(load_split(f"hf:{tmp_path / 'saved'}", "test", image_size=8)) == before
    datasets.DatasetDict({"train": _split(6), "test": _split(3, seed=1)}).save_to_disk(str(tmp_path / "saved"))
    assert dataset_identity(load_split(f"hf:{tmp_path / 'saved'}", "test", image_size=8)) != before
    # rows that only point to files (as in the datasets cache): the files' stamps, and in memory the bytes
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for i, file in enumerate(files):
        file.write_bytes(_png(i))
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=CLASSES)})
    table = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": str(f)} for f in files],
                                       "label": [0, 1, 2]}, features=features)
    pointing = HFImageDataset("hf:pointing", table, image_size=8)
    first = dataset_identity(pointing)
    files[1].write_bytes(_png(7))
    assert dataset_identity(HFImageDataset("hf:pointing", table, image_size=8)) != first
    assert len(torch.cat([x for x, _, _ in iterate_batches(pointing, 3, workers=0)])) == 3


def test_every_split_is_labelled_in_the_train_split_classes(tmp_path: Path) -> None:
    permuted = _split(6, names=["owl", "cat", "dog"])  # the same classes in another order
    datasets.DatasetDict({"train": _split(6), "validation": permuted}).save_to_disk(str(tmp_path / "perm"))
    test = load_split(f"hf:{tmp_path / 'perm'}", "test", image_size=8)
    assert test.class_names == CLASSES
    assert [CLASSES[i] for i in test.labels] == [["owl", "cat", "dog"][i % 3] for i in range(6)]
    datasets.DatasetDict({"train": _split(6), "test": _split(3, names=["c0", "c1", "c2"])}).save_to_disk(
        str(tmp_path / "other"))
    with pytest.raises(GktError, match=r"classes \['c0', 'c1', 'c2'\] are not among the train split's classes"):
        load_split(f"hf:{tmp_path / 'other'}", "test")


@pytest.mark.parametrize("fmt", [("torch", ["label"]), ("arrow", None), ("pandas", None), ("numpy", None)])
def test_a_saved_format_does_not_change_what_is_read(tmp_path: Path, fmt: tuple) -> None:
    split = _split(4).with_format(fmt[0], columns=fmt[1])
    datasets.DatasetDict({"train": _split(4), "test": split}).save_to_disk(str(tmp_path / "fmt"))
    test = load_split(f"hf:{tmp_path / 'fmt'}", "test", image_size=8)
    assert test.labels.tolist() == [0, 1, 2, 0]
    assert torch.cat([x for x, _, _ in iterate_batches(test, 4, workers=0)]).shape == (4, 3, 8, 8)


def test_unusable_inputs_are_user_errors(tmp_path: Path) -> None:
    datasets.DatasetDict({"train": _split(3), "validation": _split(3).select([])}).save_to_disk(str(tmp_path / "e"))
    with pytest.raises(GktError, match="hf:.*"):
        load_split(f"hf:{tmp_path / 'e'}", "test")
    with pytest.raises(GktError, match="imagefolder is a datasets loader, not a dataset"):
        load_split("hf:imagefolder", "test")
    script = tmp_path / "build.py"
    script.write_text("print('never run')\n")
    with pytest.raises(GktError, match="not a saved Hugging Face dataset directory"):
        load_split(f"hf:{script}", "test")


def test_a_selection_without_images_is_a_user_error(tmp_path: Path) -> None:
    datasets.DatasetDict({"train": _split(6), "test": _split(2)}).save_to_disk(str(tmp_path / "d"))  # no owl in test
    with pytest.raises(GktError, match=r"its test split has no images of the classes selected"):
        load_split(f"hf:{tmp_path / 'd'}[owl]", "test")



def test_a_directory_of_data_files_as_a_hub_snapshot_holds_them(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    snapshot = tmp_path / "snapshot" / "data"  # as `huggingface-cli download --repo-type dataset` leaves it
    snapshot.mkdir(parents=True)
    _split(6).to_parquet(str(snapshot / "train-00000-of-00001.parquet"))
    _split(3, seed=9).to_parquet(str(snapshot / "test-00000-of-00001.parquet"))
    test = load_split(f"hf:{tmp_path / 'snapshot'}", "test", image_size=8)
    assert test.class_names == CLASSES and test.labels.tolist() == [0, 1, 2]
    assert torch.cat([x for x, _, _ in iterate_batches(test, 3, workers=0)]).shape == (3, 3, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GktError, match="cannot load its data files"):
        load_split(f"hf:{tmp_path / 'empty'}", "test")


def test_rows_found_unreadable_are_remembered_so_predictions_are_reused(tmp_path: Path) -> None:
    from gkt.data.decode import reset_skipped, skipped_images
    from gkt.engine.predictions import get_many
    from gkt.models.classifier import ArchSpec, Classifier
    from gkt.models.preprocess import Preprocess

    split = _split(6)
    broken = split.cast_column("image", datasets.Image(decode=False))[2]["image"]["bytes"][:40]
    rows = [{"bytes": broken if i == 2 else r["bytes"], "path": None}
            for i, r in enumerate(split.cast_column("image", datasets.Image(decode=False))["image"])]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    bad = datasets.Dataset.from_dict({"image": rows, "label": split["label"]}, features=features)
    datasets.DatasetDict({"train": _split(6), "test": bad}).save_to_disk(str(tmp_path / "d"))
    torch.manual_seed(0)
    model = Classifier.create(ArchSpec("zoo", "mlp", 3, 3, 8, {"hidden": [4]}), Preprocess(8, 3, (0.5,) * 3,
                                                                                           (0.5,) * 3), CLASSES)
    test = load_split(f"hf:{tmp_path / 'd'}", "test", image_size=8, bad_images="skip")
    (first,) = get_many([model], test, torch.device("cpu"), workers=0)
    assert len(first) == 5 and not first.from_store
    reset_skipped()
    again = load_split(f"hf:{tmp_path / 'd'}", "test", image_size=8, bad_images="skip")  # known: left out
    assert len(again) == 5 and list(skipped_images()) == [f"hf:{tmp_path / 'd'}:test row 2"]
    (stored,) = get_many([model], again, torch.device("cpu"), workers=0)
    assert stored.from_store and stored.key == first.key
    with pytest.raises(GktError, match=r":test row 2: unreadable image"):
        load_split(f"hf:{tmp_path / 'd'}", "test", image_size=8, bad_images="fail")
