"""Small extra datasets for downstream evaluation: scikit-learn's digits (upsampled to 28×28) and
class subsets with remapped labels (e.g. the Fashion-MNIST class split used by KDEP)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from gkt.data import (
    ImageDataset,
    TensorImageDataset,
    carve_split,
    load_split,
    stratified_indices,
    train_val_split,
)
from gkt.utils import GktError

Split = Literal["train", "val", "test"]
DIGITS_TEST_FRACTION = 0.5


def load_digits_28(split: Split, seed: int = 0, test_fraction: float = DIGITS_TEST_FRACTION,
                   val_fraction: float = 0.0) -> ImageDataset:
    """scikit-learn's 1797 8×8 digits (values 0–16) scaled to 0–255 and bilinearly upsampled to 28×28,
    split stratified and seeded into train / test (and optionally a val share of train)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float()[:, None] * (255.0 / 16.0)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    full = TensorImageDataset("digits28", images.round().clamp(0, 255).to(torch.uint8),
                              torch.from_numpy(bunch.target).long(), [str(d) for d in range(10)])
    rest, test_idx = train_val_split(full.labels, test_fraction, seed)
    if split == "test":
        return full.subset(test_idx, f"test={test_fraction},seed={seed}")
    train = full.subset(rest, f"train={1 - test_fraction},seed={seed}")
    return carve_split(train, split, val_fraction, seed, "digits: a val split needs val_fraction > 0")


def digits_split(split: Split, *, val_fraction: float = 0.0, seed: int = 0, **_: object) -> ImageDataset:
    """The ``digits`` data spec of :func:`gkt.data.load_split`: the fixed (seed 0) train/test split, with
    ``val`` carved from train with ``seed``; the remaining options of ``load_split`` do not apply."""
    if split == "test":
        return load_digits_28("test", seed=0)
    return carve_split(load_digits_28("train", seed=0), split, val_fraction, seed,
                       "digits: a val split needs val_fraction > 0")


def parse_classes(text: str | Sequence[int] | None) -> list[int] | None:
    """``"0-4"``, ``"5,7,9"`` or ``"0-2,8"`` to a list of class indices (``None``/empty: all classes)."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        return [int(c) for c in text]
    classes: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            classes += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    except ValueError as exc:
        raise GktError(f"bad class list {text!r}; use e.g. 0-4 or 5,6,7") from exc
    return classes


def class_subset(dataset: ImageDataset, classes: Sequence[int]) -> ImageDataset:
    """The rows of ``dataset`` whose label is in ``classes``, relabelled ``0..len(classes)-1`` in the
    given order; class names follow."""
    classes = list(classes)
    bad = [c for c in classes if not 0 <= c < dataset.num_classes]
    if bad or len(set(classes)) != len(classes) or not classes:
        raise GktError(f"{dataset.name}: class list {classes} must name distinct classes in "
                       f"[0, {dataset.num_classes})")
    mapping = torch.full((dataset.num_classes,), -1, dtype=torch.long)
    mapping[torch.tensor(classes)] = torch.arange(len(classes))
    keep = (mapping[dataset.labels] >= 0).nonzero().flatten()
    sub = dataset.subset(keep, "classes=" + ",".join(map(str, classes)))
    sub.labels = mapping[sub.labels]
    sub.class_names = [dataset.class_names[c] for c in classes]
    return sub


DatasetLoader = Callable[..., ImageDataset]
EXTRA_DATASETS: dict[str, DatasetLoader] = {"digits": load_digits_28}


def load_data(spec: str, split: Split, *, classes: str | Sequence[int] | None = None,
              fraction: float | None = None, per_class: int | None = None, seed: int = 0,
              data_dir: str | None = None, val_fraction: float = 0.0, image_size: int = 28,
              channels: int = 1) -> ImageDataset:
    """One split of ``spec`` (``digits``, or any :func:`gkt.data.load_split` spec such as ``fmnist`` or
    ``folder:PATH``, whose images are resized to ``image_size`` with ``channels``), restricted to ``classes`` and then to a stratified ``fraction``/``per_class``
    subset (seeded)."""
    if spec in EXTRA_DATASETS:
        dataset = EXTRA_DATASETS[spec](split, seed=0, val_fraction=val_fraction)
    else:
        dataset = load_split(spec, split, data_dir=data_dir, val_fraction=val_fraction, seed=0,
                             image_size=image_size, channels=channels)
    selected = parse_classes(classes)
    if selected is not None:
        dataset = class_subset(dataset, selected)
    if fraction is not None and fraction < 1 or per_class is not None:
        idx = stratified_indices(dataset.labels, fraction=fraction if per_class is None else None,
                                 per_class=per_class, seed=seed)
        dataset = dataset.subset(idx, f"frac={fraction},per_class={per_class},seed={seed}")
    return dataset
