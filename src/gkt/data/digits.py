"""scikit-learn's 8x8 digits upsampled to 28x28: a small second data set."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from gkt.data.datasets import ImageDataset, TensorImageDataset
from gkt.data.subsets import carve_split, train_val_split

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
