"""Encoded images: torchvision decoding, decode size, unreadable images at decode time, the folder index,
and Hugging Face datasets."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gkt.core.errors import GktError
from gkt.data.datasets import iterate_batches
from gkt.data.decode import ImageIndex, decode_image, reset_skipped, skipped_images
from gkt.data.folder import load_image_folder
from gkt.data.spec import load_split
from gkt.data.views import square_view
from gkt.engine.predictions import dataset_identity


def _jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
    gradient = np.linspace(0, 200, width)[None, :, None] + rng.integers(0, 40, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(gradient.astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def write_jpeg_folder(root: Path, classes: dict[str, int], truncated: str | None = None) -> Path:
    """``root/<class>/<i>.jpg`` of varying sizes; ``truncated`` (``class/name.jpg``) is cut in half."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes(_jpeg(rng, 30 + 3 * i, 40 + 2 * i))
    if truncated:
        data = _jpeg(rng, 40, 50)
        (root / truncated).write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(autouse=True)
def _fresh_skips() -> None:
    reset_skipped()


def test_a_16_bit_png_decodes_as_pil_converts_it() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.arange(0, 60000, 250, dtype=np.uint16).reshape(12, 20)).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    image = decode_image(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), 3)
    pil = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(pil).permute(2, 0, 1))


def test_square_decode_matches_pil_and_reads_other_formats() -> None:
    rng = np.random.default_rng(1)
    smooth = np.linspace(0, 200, 50)[None, :, None] + np.linspace(0, 50, 30)[:, None, None] + np.zeros((1, 1, 3))
    buf = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    out = square_view(16).apply(decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), 3))
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    with Image.open(io.BytesIO(data)) as img:  # the same transform with PIL: shorter side 16, centre crop
        ref = np.asarray(img.convert("RGB").resize((26, 16), Image.BILINEAR, reducing_gap=None))[:, 5:21]
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).mean() < 2
    buf = io.BytesIO()  # BMP: not a torchvision format, read by PIL
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(buf, "BMP")
    gray = square_view(8).apply(decode_image(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), 1))
    assert gray.shape == (1, 8, 8)


def test_listing_opens_no_image_and_decoding_names_a_truncated_one(tmp_path: Path) -> None:
    root = write_jpeg_folder(tmp_path / "train", {"a": 3, "b": 3}, truncated="a/broken.jpg")
    ds = load_image_folder(root, image_size=12)  # listed, not opened: no error yet
    assert len(ds) == 7 and ds.image_shape == (3, 12, 12)
    with pytest.raises(GktError, match=r"broken\.jpg: unreadable image .*--bad-images skip"):
        list(iterate_batches(ds, 4, workers=2))
    # the index remembers it: the next listing fails at once, naming the file
    with pytest.raises(GktError, match=r"broken\.jpg: unreadable image"):
        load_image_folder(root, image_size=12)


def test_skip_drops_the_unreadable_image_at_decode_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_jpeg_folder(tmp_path / "train", {"a": 3, "b": 3}, truncated="a/broken.jpg")
    ds = load_image_folder(root, image_size=12, bad_images="skip")
    before = dataset_identity(ds)
    with caplog.at_level(logging.WARNING, logger="gkt"):
        batches = list(iterate_batches(ds, 3, workers=1))
    assert caplog.text.count("skipping unreadable image") == 1 and "broken.jpg" in caplog.text
    seen = torch.cat([idx for _, _, idx in batches])
    assert len(seen) == 6 and sum(len(images) for images, _, _ in batches) == 6
    assert list(skipped_images()) == [str(root / "a" / "broken.jpg")]
    assert len(ds) == 6 and all(p.name != "broken.jpg" for p in ds.files)  # dropped after the in-order pass
    assert dataset_identity(ds) != before
    labels = torch.cat([lab for _, lab, _ in batches])
    assert torch.equal(labels, ds.labels)
    reset_skipped()
    again = load_image_folder(root, image_size=12, bad_images="skip")  # known now: left out when listed
    assert len(again) == 6 and len(skipped_images()) == 1


def test_a_repaired_file_is_used_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    root = write_jpeg_folder(tmp_path / "train", {"a": 3, "b": 3}, truncated="a/broken.jpg")
    broken = root / "a" / "broken.jpg"
    with pytest.raises(GktError):
        list(iterate_batches(load_image_folder(root, image_size=12), 7, workers=0))
    # the repair: a readable JPEG padded to the broken file's size, put back with its mtime (as ``cp -p`` does)
    good, stat = _jpeg(np.random.default_rng(1), 8, 8), broken.stat()
    assert len(good) < stat.st_size
    repaired = tmp_path / "repaired.jpg"
    repaired.write_bytes(good + bytes(stat.st_size - len(good)))  # bytes after the JPEG's end are ignored
    os.utime(repaired, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shutil.copy2(repaired, broken)
    assert (broken.stat().st_size, broken.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    ds = load_image_folder(root, image_size=12)  # a new file stamp (status-change time): tried again
    assert len(ds) == 7 and not ImageIndex(str(root)).bad  # and the stale record is dropped
    assert len(torch.cat([idx for _, _, idx in iterate_batches(ds, 7, workers=0)])) == 7


@pytest.mark.parametrize("damage", ["{garbage", "[1, 2]", '{"bad": [1], "stats": 3}', '{"bad": {"a/0.jpg": 5}}'])
def test_a_damaged_folder_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    root = write_jpeg_folder(tmp_path / "train", {"a": 2, "b": 2})
    ds = load_image_folder(root, image_size=8)
    ds.pixel_stats()
    ds.index.path.write_text(damage)
    again = load_image_folder(root, image_size=8)
    assert len(again) == 4 and again.pixel_stats() == ds.pixel_stats()


def test_links_and_hidden_files_in_a_folder(tmp_path: Path) -> None:
    root = write_jpeg_folder(tmp_path / "train", {"a": 2, "b": 2})
    elsewhere = write_jpeg_folder(tmp_path / "more", {"c": 3})
    (root / "a" / "linked").symlink_to(elsewhere / "c", target_is_directory=True)  # a linked folder: followed
    (root / "b" / "loop").symlink_to(root / "b", target_is_directory=True)  # a cycle: each folder once
    (root / "a" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS metadata")  # hidden: not images
    (root / ".ipynb_checkpoints").mkdir()
    (root / "b" / ".ipynb_checkpoints").mkdir()
    (root / "b" / ".ipynb_checkpoints" / "0-checkpoint.jpg").write_bytes((root / "b" / "0.jpg").read_bytes())
    ds = load_image_folder(root, image_size=8)
    assert len(ds) == 7 and ds.class_names == ["a", "b"]
    (root / "a" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    with pytest.raises(GktError, match=r"gone\.jpg: unreadable image \(a link to a missing file\)"):
        load_image_folder(root, image_size=8)
    ds = load_image_folder(root, image_size=8, bad_images="skip")
    assert len(ds) == 7 and list(skipped_images()) == [str(root / "a" / "gone.jpg")]


def test_shuffled_pass_skips_without_dropping(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_jpeg_folder(tmp_path / "train", {"a": 2, "b": 2}, truncated="b/broken.jpg")
    ds = load_image_folder(root, image_size=8, bad_images="skip")
    with caplog.at_level(logging.WARNING, logger="gkt"):
        rows = [idx for _, _, idx in iterate_batches(ds, 2, shuffle=True, generator=torch.Generator().manual_seed(0),
                                                       workers=0)]
    assert "skipping unreadable image" in caplog.text
    assert len(ds) == 5 and sum(map(len, rows)) == 4  # positions stay valid during training
    assert len(ds.unreadable_rows()) == 1
    rows = [idx for _, _, idx in iterate_batches(ds, 2, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert sum(map(len, rows)) == 4  # a known unreadable row is not decoded again


def test_decode_size_workers_and_pixel_stats_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_jpeg_folder(tmp_path / "train", {"a": 4, "b": 4})
    ds = load_image_folder(root, image_size=12)
    big = ds.at_decode_size(20)
    assert big.image_shape == (3, 20, 20) and ds.image_shape == (3, 12, 12)
    assert dataset_identity(big) != dataset_identity(ds)
    serial = torch.cat([x for x, _, _ in iterate_batches(big, 3, workers=0)])
    parallel = torch.cat([x for x, _, _ in iterate_batches(big, 3, workers=2)])
    assert serial.shape == (8, 3, 20, 20) and torch.equal(serial, parallel)
    stats = ds.pixel_stats()
    import gkt.data.datasets as datasets_module

    monkeypatch.setattr(datasets_module.EncodedImageDataset, "decode", lambda self, i: 1 / 0)
    assert load_image_folder(root, image_size=12).pixel_stats() == stats  # from the folder's index


def test_decoding_workers_get_their_cpus_from_the_consumers_threads(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch threads and decoding workers that each want every core halve an analysis on 2 cores: while
    workers decode, the consumer keeps the CPUs they leave (unless --threads chose its count)."""
    import gkt.core.runtime as runtime

    root = write_jpeg_folder(tmp_path / "train", {"a": 4, "b": 4})
    ds = load_image_folder(root, image_size=12)
    monkeypatch.setattr(runtime, "available_cpus", lambda: 4)
    monkeypatch.setattr(runtime, "_threads_chosen", False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        seen = [torch.get_num_threads() for _ in iterate_batches(ds, 2, workers=3)]
        assert seen == [1] * 4 and torch.get_num_threads() == 4  # 4 CPUs - 3 workers; restored after the pass
        assert {torch.get_num_threads() for _ in iterate_batches(ds, 2, workers=2)} == {2}
        assert {torch.get_num_threads() for _ in iterate_batches(ds, 2, workers=0)} == {4}  # no workers: all
        runtime.set_threads(3)  # --threads: kept as given
        assert {torch.get_num_threads() for _ in iterate_batches(ds, 2, workers=3)} == {3}
    finally:
        torch.set_num_threads(before)


def test_a_study_workers_decoders_come_out_of_its_cpu_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoders: half the CPUs while the models compute on the CPU (the other half run torch threads), all
    but one for a GPU consumer; a study worker's CPU share bounds both."""
    import gkt.core.runtime as runtime
    from gkt.data.datasets import default_workers

    def cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    monkeypatch.setattr(runtime, "_cpu_share", None)
    monkeypatch.setattr(runtime, "_threads_chosen", False)
    before = torch.get_num_threads()
    try:
        cpus(16)
        assert runtime.available_cpus() == 16 and (default_workers(), default_workers(models_on_gpu=True)) == (8, 8)
        cpus(8)
        assert (default_workers(), default_workers(models_on_gpu=True)) == (4, 7)
        torch.set_num_threads(8)
        with runtime.threads_beside(default_workers()):
            assert torch.get_num_threads() == 4
        cpus(2)
        assert (default_workers(), default_workers(models_on_gpu=True)) == (1, 1)
        cpus(16)
        runtime.set_cpu_share(3)  # one of several study workers on the machine
        assert torch.get_num_threads() == 3 and runtime.available_cpus() == 3 and default_workers() == 1
        with runtime.threads_beside(default_workers()):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3 and default_workers(models_on_gpu=True) == 2
    finally:
        torch.set_num_threads(before)


def test_pixel_statistics_stay_when_unreadable_images_drop_out(tmp_path: Path) -> None:
    """The statistics (which a random-init model's identity includes) come from the first readable images in
    an order fixed by their paths: the same after a skip pass has left unreadable images out of the listing."""
    from gkt.core.hashing import hash_order

    root = write_jpeg_folder(tmp_path / "train", {"a": 150, "b": 150})
    for name in ("a/x1.jpg", "a/x2.jpg", "b/x3.jpg", "b/x4.jpg"):
        (root / name).write_bytes((root / "a" / "0.jpg").read_bytes()[:200])
    first = load_image_folder(root, image_size=12, bad_images="skip")
    head = {first.source(int(i)) for i in hash_order([first.source(i) for i in range(len(first))])[:256]}
    assert any(name.startswith("x") for name in map(lambda s: Path(s).name, head))  # a broken one is sampled
    stats = first.pixel_stats()
    assert len(skipped_images()) >= 1
    list(iterate_batches(first, 64))  # the pass that finds every unreadable image (and drops them)
    again = load_image_folder(root, image_size=12, bad_images="skip")
    assert len(again) == 300  # the unreadable images are left out when listed now
    assert again.pixel_stats() == stats


def test_hf_dataset_spec(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "owl"]),
                                  "note": datasets.Value("string")})

    def split(n: int) -> object:
        images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(n)],
                                           "note": ["x"] * n}, features=features)

    datasets.DatasetDict({"train": split(12), "validation": split(6)}).save_to_disk(str(tmp_path / "hfds"))
    train = load_split(f"hf:{tmp_path / 'hfds'}", "train", val_fraction=0, image_size=16)
    assert train.class_names == ["cat", "dog", "owl"] and len(train) == 12
    assert train.labels.tolist() == [i % 3 for i in range(12)]
    images = torch.cat([x for x, _, _ in iterate_batches(train, 5, workers=2)])
    assert images.shape == (12, 3, 16, 16)
    test = load_split(f"hf:{tmp_path / 'hfds'}", "test", image_size=16)  # falls back to the validation split
    assert len(test) == 6
    val = load_split(f"hf:{tmp_path / 'hfds'}", "val", image_size=16)
    assert len(val) == 6 and dataset_identity(val) != dataset_identity(train)
    datasets.DatasetDict({"train": split(10)}).save_to_disk(str(tmp_path / "only_train"))
    carved = load_split(f"hf:{tmp_path / 'only_train'}", "val", val_fraction=0.3, image_size=16)
    assert 0 < len(carved) < 10
    with pytest.raises(GktError, match="no labelled test or validation split"):
        load_split(f"hf:{tmp_path / 'only_train'}", "test")
    with pytest.raises(GktError, match="not a saved Hugging Face dataset"):
        load_split(f"hf:{tmp_path / 'missing'}", "train")


def test_hf_spec_options_choose_columns_and_splits(tmp_path: Path) -> None:
    """A hub-style dataset: coarse and fine labels (as CIFAR-100), a test split held back (labels -1, as
    ImageNet's), a labelled validation split."""
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "photo": datasets.Image(),
                                  "coarse_label": datasets.ClassLabel(names=["animal", "plant"]),
                                  "fine_label": datasets.ClassLabel(names=["cat", "dog", "fern"])})

    def split(n: int, labelled: bool = True) -> object:
        images = [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"image": images, "photo": images[::-1],
                                           "coarse_label": [i % 2 if labelled else -1 for i in range(n)],
                                           "fine_label": [i % 3 if labelled else -1 for i in range(n)]},
                                          features=features)

    root = tmp_path / "hub"
    datasets.DatasetDict({"train": split(9), "validation": split(6), "test": split(4, labelled=False)}
                         ).save_to_disk(str(root))
    first = load_split(f"hf:{root}", "train", image_size=8)  # neither column is named label: the first
    assert first.class_names == ["animal", "plant"]
    fine = load_split(f"hf:{root}?label=fine_label", "train", image_size=8)
    assert fine.class_names == ["cat", "dog", "fern"] and fine.labels.tolist() == [i % 3 for i in range(9)]
    test = load_split(f"hf:{root}?label=fine_label", "test", image_size=8)  # the unlabelled test split passed over
    assert len(test) == 6 and test.name.endswith(":validation")
    with pytest.raises(GktError, match=r"4 rows have no label .*name a labelled split with \?train=, \?val= or \?test="):
        load_split(f"hf:{root}?test=test", "test")  # named: used, and refused for its missing labels
    photo = load_split(f"hf:{root}?image=photo&label=fine_label", "train", image_size=8)
    assert dataset_identity(photo) != dataset_identity(fine)
    flipped = torch.cat([x for x, _, _ in iterate_batches(photo, 9, workers=0)])
    assert torch.equal(flipped, torch.cat([x for x, _, _ in iterate_batches(fine, 9, workers=0)]).flip(0))
    with pytest.raises(GktError, match="no labelled test or validation split"):  # not the train split again
        load_split(f"hf:{root}?train=validation", "test", image_size=8)
    with pytest.raises(GktError, match="is the split that serves as train"):
        load_split(f"hf:{root}?train=validation&test=validation", "test", image_size=8)
    classes = load_split(f"hf:{root}?label=fine_label[dog,fern]", "test", image_size=8)
    assert classes.class_names == ["dog", "fern"] and len(classes) == 4
    nulls = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    holes = tmp_path / "holes"  # web-scraped hub data: a row whose image is missing
    pictures = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]
    datasets.Dataset.from_dict({"image": [*pictures, None], "label": [0, 1, 0, 1]}, features=nulls
                               ).save_to_disk(str(holes))
    with pytest.raises(GktError, match=r"row 3: unreadable image \(the row holds no image\).*--bad-images skip"):
        list(iterate_batches(load_split(f"hf:{holes}", "train", image_size=8, val_fraction=0), 4, workers=0))
    kept = load_split(f"hf:{holes}", "train", image_size=8, val_fraction=0, bad_images="skip")
    assert sum(len(x) for x, _, _ in iterate_batches(kept, 4, workers=0)) == 3 and len(kept) == 3
    null_root = tmp_path / "nulls"
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=nulls),
                          "validation": datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1, 0]},
                                                                   features=nulls),
                          "test": datasets.Dataset.from_dict({"image": images, "label": [None] * 4}, features=nulls)}
                         ).save_to_disk(str(null_root))
    assert load_split(f"hf:{null_root}", "test", image_size=8).name.endswith(":validation")  # null labels: none
    with pytest.raises(GktError, match="4 rows have no label"):
        load_split(f"hf:{null_root}?test=test", "test", image_size=8)
    noval = tmp_path / "noval"  # no validation split shipped: val is carved from train, train is the rest
    datasets.DatasetDict({"train": split(20)}).save_to_disk(str(noval))
    train, val = (load_split(f"hf:{noval}", s, image_size=8, val_fraction=0.25) for s in ("train", "val"))
    assert len(train) + len(val) == 20 and not set(train.rows.tolist()) & set(val.rows.tolist())
    assert len(load_split(f"hf:{noval}", "train", image_size=8, val_fraction=0)) == 20
    assert len(load_split(f"hf:{root}", "train", image_size=8, val_fraction=0.25)) == 9  # validation shipped
    for spec, message in ((f"hf:{root}?label=species", r"label=species is not a label column .*fine_label"),
                          (f"hf:{root}?label=coarse_label&label=fine_label", "option label given twice"),
                          (f"hf:{root}?colour=red", "unknown option 'colour'; the options are image"),
                          (f"hf:{root}?test=holdout", r"test=holdout is not one of its splits \(train, validation"),
                          (f"hf:{root}?label=", "needs a value")):
        with pytest.raises(GktError, match=message):
            load_split(spec, "test", image_size=8)


def test_hf_dataset_from_the_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hf:ORG/NAME`` offline: ``load_dataset`` finds the dataset in its cache, laid out as a hub download
    leaves it (``ORG___NAME/default/0.0.0/HASH/NAME-SPLIT.arrow``; here written by the same Parquet builder)."""
    import shutil

    datasets = pytest.importorskip("datasets")
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    for split, n in (("train", 6), ("test", 4)):
        images = [Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)) for _ in range(n)]
        datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]},
                                   features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    builder = Parquet(cache_dir=str(cache), dataset_name="org___tiny", config_name="default", hash="0123abcd",
                      data_files={s: str(tmp_path / f"{s}.parquet") for s in ("train", "test")})
    builder.download_and_prepare()
    config_dir = Path(builder.cache_dir).parents[1]
    shutil.move(str(config_dir), str(config_dir.with_name("default")))
    for arrow in config_dir.with_name("default").rglob("org___tiny-*"):
        arrow.rename(arrow.with_name(arrow.name.replace("org___tiny-", "tiny-")))
    test = load_split("hf:org/tiny", "test", image_size=8)
    assert len(test) == 4 and test.class_names == ["a", "b"]
    assert next(iterate_batches(test, 4))[0].shape == (4, 3, 8, 8)
    with pytest.raises(GktError, match="nor a dataset in the local datasets cache"):
        load_split("hf:org/absent", "test")


def test_a_file_that_is_no_image_gets_a_stable_reason() -> None:
    """Not an image at all: the reason says so, the same on every run (PIL's names a BytesIO object)."""
    from gkt.data.decode import UnreadableImage, decode_image

    with pytest.raises(UnreadableImage, match=r"^not an image format torchvision or PIL can read$"):
        decode_image(torch.frombuffer(bytearray(b"plain text, no image " * 8), dtype=torch.uint8), 3)


def test_decoding_workers_and_shared_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    """Containers often give /dev/shm 64 MB: a warning (once) when the workers' batches may not fit, and one
    clear message with exit code 2, not a DataLoader traceback, when a worker dies of it."""
    import collections
    import types

    import gkt.data.decode as decode
    from gkt.cli import main

    root = write_jpeg_folder(tmp_path / "train", {"a": 4, "b": 4})
    ds = load_image_folder(root, image_size=12)
    usage = collections.namedtuple("usage", "total used free")
    small = types.SimpleNamespace(disk_usage=lambda path: usage(1000, 900, 100))
    monkeypatch.setattr(decode, "shutil", small)  # this module's view of /dev/shm only
    monkeypatch.setattr(decode, "_warned_shared_memory", set())
    with caplog.at_level(logging.WARNING, logger="gkt"):
        for _ in range(2):  # a second pass (the next epoch) does not warn again
            assert sum(len(x) for x, _, _ in iterate_batches(ds, 4, workers=2)) == 8
    assert caplog.text.count("2 decoding workers may need 0 MB of shared memory") == 1 and "--shm-size" in caplog.text

    def died(*args: object, **kwargs: object) -> None:  # what torch's SIGCHLD handler raises mid-forward
        raise RuntimeError("DataLoader worker (pid 7) is killed by signal: Bus error. It is possible that "
                           "dataloader's workers are out of shared memory. Please try to raise your shared memory limit.")

    write_jpeg_folder(tmp_path / "val", {"a": 2, "b": 2})
    monkeypatch.setattr("gkt.analysis.complementary.get_many", died)
    code = main(["analyze", "--models", "timm:test_vit?img_size=16", "timm:resnet10t?img_size=16", "--data",
                 f"folder:{tmp_path}", "--out", str(tmp_path / "runs"), "--no-figures", "--no-semantic"])
    err = capsys.readouterr().err
    assert code == 2 and "a data-loading worker died (DataLoader worker (pid 7) is killed by signal: Bus error" in err
    assert "--shm-size" in err and "Traceback" not in err
