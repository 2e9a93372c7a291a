"""Seeded stratified subsets, validation splits and class subsets."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from gkt.core.errors import GktError
from gkt.data.datasets import ImageDataset

log = logging.getLogger(__name__)


def stratified_indices(labels: torch.Tensor, *, fraction: float | None = None, per_class: int | None = None,
                       seed: int = 0) -> torch.Tensor:
    """Indices of a seeded stratified subset: ``fraction`` of each class (at least one sample) or
    ``per_class`` samples of each class. Sorted, so the subset keeps the dataset's order."""
    if (fraction is None) == (per_class is None):
        raise GktError("give exactly one of fraction or per_class for a stratified subset")
    if fraction is not None and not 0 < fraction <= 1:
        raise GktError(f"subset fraction must be in (0, 1], got {fraction}")
    labels = labels.long()
    generator = torch.Generator().manual_seed(seed)
    # One permutation, then a stable sort by label: each class's samples come in random order.
    perm = torch.randperm(len(labels), generator=generator)
    order = perm[torch.sort(labels[perm], stable=True).indices]
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 0)
    if per_class is not None:
        if (counts < per_class).any():
            short = (counts < per_class).nonzero().flatten().tolist()
            raise GktError(f"classes {short} have fewer than {per_class} samples")
        take = torch.full_like(counts, per_class)
    else:
        take = torch.clamp((counts.double() * fraction).round().long(), min=1) * (counts > 0)
        raised = int(((counts.double() * fraction).round() == 0).logical_and(counts > 0).sum())
        if raised and int(take.sum()) > 1.5 * fraction * len(labels):
            log.warning("a stratified %.3g share keeps one sample of each class: %d classes have fewer than %.0f "
                        "samples, so the subset has %d samples, not about %d", fraction, raised, 0.5 / fraction,
                        int(take.sum()), round(fraction * len(labels)))
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(len(labels)) - starts[labels[order]]
    chosen = order[rank_in_class < take[labels[order]]]
    return torch.sort(chosen).values


def train_val_split(labels: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split of indices into (train, val)."""
    val = stratified_indices(labels, fraction=val_fraction, seed=seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return mask.nonzero().flatten(), val


def stratified_subset(dataset: ImageDataset, fraction: float | None = None, per_class: int | None = None,
                      seed: int = 0) -> ImageDataset:
    if fraction == 1.0 and per_class is None:
        return dataset
    idx = stratified_indices(dataset.labels, fraction=fraction, per_class=per_class, seed=seed)
    tag = f"frac={fraction}" if fraction is not None else f"per_class={per_class}"
    return dataset.subset(idx, f"{tag},seed={seed}")


def carve_split(train: ImageDataset, split: str, val_fraction: float, seed: int, no_val_message: str
                ) -> ImageDataset:
    """``train`` minus a seeded stratified val split (``split == "train"``) or that val split; with
    ``val_fraction <= 0`` the whole of ``train`` (asking for ``val`` is then an error)."""
    if val_fraction <= 0:
        if split == "val":
            raise GktError(no_val_message)
        return train
    train_idx, val_idx = train_val_split(train.labels, val_fraction, seed)
    return train.subset(train_idx if split == "train" else val_idx, f"{split},val={val_fraction},seed={seed}")


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
    sub.all_class_names = dataset.all_class_names  # the data set's classes before the selection
    return sub
