"""``gkt improve``'s options and data: the config dataclass (the one place its defaults live), the disjoint
transfer / selection / certification splits, and the models aligned to the data (cached per process, so every
candidate job of a worker shares them)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_indices, stratified_subset
from gkt.models import Classifier, DataInfo, load_model


@dataclass(frozen=True)
class ImproveConfig:
    """The options of ``gkt improve`` that shape its decision (the CLI's and :func:`improve`'s defaults)."""

    data: str = "fmnist"
    unlabelled: bool = False  # the transfer set's labels are not used (selection and certification stay labelled)
    risk: float = 0.05  # the chance of accepting a model that is in truth no better
    budget: int = 20  # candidate transfers at most (stage 1 + 2 + 3)
    # stage 1's learning rates (SGD, momentum 0.9): 1000x around the transfer default 3e-4 — a student far from
    # converged moves only at the high end, a converged one only at the low end
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    epochs: int = 1  # stages 1 and 2
    longer_epochs: int = 3  # stage 3: the best candidates trained this long
    fraction: float = 1.0  # stratified share of the train split as transfer set: all of it (the user's data)
    max_teachers: int = 3  # the top-ranked kept teachers searched
    held_out: str = "test"  # the labelled split cut into selection + certification: test (no model trained on
    # it: a folder's test/ or val/, hf's test or validation split) or val (shipped, else carved from train)
    selection_share: float = 0.5  # share of the held-out split for selection; the rest certifies
    val_fraction: float = 0.1  # held_out="val": share of train carved as val when the data ships none
    batch_size: int = 128
    seed: int = 0
    class_map: dict[str, Any] | None = None  # {data class: model class or list}, aligning every model
    data_dir: str | None = None
    zoo_dir: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        checks = [(0 < self.risk < 1, f"--risk must be in (0, 1), got {self.risk}"),
                  (self.budget >= 1, f"--budget must be at least 1 transfer, got {self.budget}"),
                  (bool(self.lrs) and all(math.isfinite(lr) and lr > 0 for lr in self.lrs),
                   f"--lrs must be positive learning rates, got {list(self.lrs)}"),
                  (self.epochs >= 1 and self.longer_epochs >= 1,
                   f"--epochs and --longer-epochs must be at least 1, got {self.epochs}, {self.longer_epochs}"),
                  (0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}"),
                  (self.max_teachers >= 1, f"--max-teachers must be at least 1, got {self.max_teachers}"),
                  (0 < self.selection_share < 1, f"--selection-share must be in (0, 1), got {self.selection_share}"),
                  (self.held_out in ("test", "val"), f"--held-out must be test or val, got {self.held_out!r}"),
                  (0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
                  (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")]
        for ok, message in checks:
            if not ok:
                raise GktError(message)

    @property
    def method(self) -> str:
        """The transfer method: KL+DP with labels, its label-free form without (paper §4.2, Eq. 4)."""
        return "kl-dp-unsup" if self.unlabelled else "kl-dp"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lrs": list(self.lrs), "method": self.method}


# ---------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Splits:
    """The transfer set and the two labelled held-out splits, disjoint; ``val_source`` says where they came from."""

    transfer: ImageDataset
    selection: ImageDataset
    certification: ImageDataset
    val_source: str
    held_out: ImageDataset  # selection and certification together

    def sizes(self) -> dict[str, Any]:
        return {"transfer": len(self.transfer), "selection": len(self.selection),
                "certification": len(self.certification), "held_out_from": self.val_source}


def held_out_split(data: str, data_dir: str | None, held_out: str, val_fraction: float, seed: int
                   ) -> tuple[ImageDataset, ImageDataset, str]:
    """``(train, held-out, where the held-out split came from)``, never overlapping: the data's test split
    (``held_out="test"``: a folder's test/ or val/, hf's test or validation split) or its val split (shipped,
    else carved from train, which is then the rest)."""
    if held_out == "test":
        train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
        val = load_split(data, "test", data_dir=data_dir)
        return train, val, f"{data}'s test split ({val.name})"
    try:  # a val split the data ships: train stays whole
        val = load_split(data, "val", data_dir=data_dir, val_fraction=0)
        return load_split(data, "train", data_dir=data_dir, val_fraction=0), val, f"the val split {data} ships ({val.name})"
    except GktError:  # none shipped: carve it from train (train is then the rest; never overlapping)
        val = load_split(data, "val", data_dir=data_dir, val_fraction=val_fraction, seed=seed)
        train = load_split(data, "train", data_dir=data_dir, val_fraction=val_fraction, seed=seed)
        return train, val, (f"a stratified {val_fraction:g} of {data}'s train split (seed {seed}), carved as val: "
                            "only held out for models that did not train on it")


@functools.lru_cache(maxsize=4)
def load_splits(data: str, data_dir: str | None, held_out: str, val_fraction: float, selection_share: float,
                fraction: float, seed: int) -> Splits:
    """The improve splits of ``data`` (cached per process: every candidate job of a worker shares them)."""
    train, val, source = held_out_split(data, data_dir, held_out, val_fraction, seed)
    chosen = stratified_indices(val.labels, fraction=selection_share, seed=seed)
    rest = torch.ones(len(val), dtype=torch.bool)
    rest[chosen] = False
    selection = val.subset(chosen, f"selection={selection_share},seed={seed}")
    certification = val.subset(rest.nonzero().flatten(), f"certification={1 - selection_share:.4g},seed={seed}")
    if not len(selection) or not len(certification):
        raise GktError(f"{data}: its held-out split ({len(val)} images) is too small to cut into a selection and a "
                       "certification split; give more held-out data")
    transfer = stratified_subset(train, fraction=fraction, seed=seed)
    return Splits(transfer, selection, certification, source, val)


def load_models(specs: Sequence[str], config: ImproveConfig) -> list[Classifier]:
    """``specs`` aligned to the data's classes (``config.class_map``, else by name); fresh copies of models
    cached per process."""
    class_map = json.dumps(config.class_map, sort_keys=True) if config.class_map else None
    return [_cached_model(spec, config.data, config.data_dir, config.held_out, config.val_fraction, config.selection_share,
                          config.fraction, config.seed, config.zoo_dir, class_map).clone() for spec in specs]


@functools.lru_cache(maxsize=32)
def _cached_model(spec: str, data: str, data_dir: str | None, held_out: str, val_fraction: float,
                  selection_share: float, fraction: float, seed: int, zoo_dir: str | None, class_map: str | None
                  ) -> Classifier:
    splits = load_splits(data, data_dir, held_out, val_fraction, selection_share, fraction, seed)
    return load_model(spec, DataInfo.from_dataset(splits.transfer), zoo_dir,
                      class_map=json.loads(class_map) if class_map else "auto")


