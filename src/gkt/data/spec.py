"""Data specs: one string names a data set split (``BASE[CLASSES]@DOMAIN``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from gkt.core.errors import GktError
from gkt.data.datasets import DEFAULT_DECODE_SIZE, ImageDataset, load_image_folder
from gkt.data.decode import BadImagePolicy
from gkt.data.digits import digits_split, load_digits_28
from gkt.data.fmnist import load_fashion_mnist
from gkt.data.hf import hf_split
from gkt.data.subsets import carve_split, class_subset, parse_classes, stratified_indices

Split = Literal["train", "val", "test"]


# Further data specs: kind -> "module:function" loading one split with the keyword arguments of
# :func:`load_split` (``split, *, path, data_dir, val_fraction, seed, image_size, channels, bad_images``);
# imported on first use, so extensions may import this module.
DATA_SPEC_LOADERS: dict[str, Callable[..., ImageDataset]] = {"digits": digits_split, "hf": hf_split}


DOMAIN_SEPARATOR = "@"  # ``BASE@DOMAIN``: a registered style transform of gkt.domains applied to BASE


@dataclass(frozen=True)
class DataSpec:
    """``fmnist`` (embedded default), ``folder:PATH`` (ImageNet layout: PATH/train, PATH/val), a kind of
    :data:`DATA_SPEC_LOADERS` (``digits``), each optionally ``@DOMAIN`` (e.g. ``fmnist@edges``)."""

    kind: str
    path: str | None = None
    domain: str | None = None

    @classmethod
    def parse(cls, spec: str) -> DataSpec:
        base, sep, domain = spec.rpartition(DOMAIN_SEPARATOR)
        if sep:
            if not (base and domain):
                raise GktError(f"data spec {spec!r}: use BASE@DOMAIN, e.g. fmnist@edges")
            return replace(cls.parse(base), domain=domain)
        kind, _, rest = spec.partition(":")
        if kind in ("fmnist", "fashion-mnist", "fashion_mnist"):
            return cls("fmnist", rest or None)
        if kind == "folder" and rest:
            return cls("folder", rest)
        if kind in DATA_SPEC_LOADERS:
            return cls(kind, rest or None)
        extra = "".join(f", '{k}'" for k in DATA_SPEC_LOADERS)
        raise GktError(f"unknown data spec {spec!r}; use 'fmnist', 'folder:PATH' (PATH/train/<class>/...){extra}, "
                       "optionally with @DOMAIN (e.g. fmnist@edges)")


def load_split(spec: str | DataSpec, split: Literal["train", "val", "test"], *, data_dir: str | None = None,
               val_fraction: float = 0.1, seed: int = 0, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
               bad_images: BadImagePolicy | None = None) -> ImageDataset:
    """Load one split of a data spec. ``val`` is carved (stratified, seeded) from ``train`` unless the
    dataset ships one; for Fashion-MNIST ``train`` then means the rest of the official train split.
    ``BASE@DOMAIN`` loads the same split of BASE with the domain's transform applied (same samples).
    Encoded images (folders, ``hf:``) are decoded at ``image_size`` (see :meth:`ImageDataset.at_decode_size`);
    ``bad_images`` (default ``$GKT_BAD_IMAGES``, else fail) says what an unreadable one does."""
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.domain is not None:
        from gkt.data.domains import apply_domain

        base = replace(spec, domain=None)
        return apply_domain(load_split(base, split, data_dir=data_dir, val_fraction=val_fraction, seed=seed,
                                       image_size=image_size, channels=channels, bad_images=bad_images), spec.domain)
    if spec.kind in DATA_SPEC_LOADERS:
        return DATA_SPEC_LOADERS[spec.kind](split, path=spec.path, data_dir=data_dir, val_fraction=val_fraction, seed=seed,
                      image_size=image_size, channels=channels, bad_images=bad_images)
    if spec.kind == "fmnist":
        if split == "test":
            return load_fashion_mnist("test", spec.path or data_dir)
        full = load_fashion_mnist("train", spec.path or data_dir)
        return carve_split(full, split, val_fraction, seed, "a val split needs --val-fraction > 0")
    root = Path(spec.path)
    train_root = root / "train"
    if not train_root.is_dir():
        raise GktError(f"{root}: expected an ImageNet-layout folder with {train_root}/<class>/<images>")
    train = load_image_folder(train_root, image_size, channels, bad_images)
    shipped = {"val": root / "val", "test": root / "test"}
    for name in (split, "val") if split == "test" else (split,):
        if name in shipped and shipped[name].is_dir():
            return load_image_folder(shipped[name], image_size, channels, bad_images, train.class_names)
    if split == "test":
        raise GktError(f"{root}: no val/ or test/ folder to evaluate on")
    return carve_split(train, split, val_fraction, seed, f"{root}: no val/ folder; carve one with --val-fraction > 0")


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
