"""The embedded zoo: a diverse set of Fashion-MNIST classifiers that gkt trains itself.

Diversity is the point (the paper's premise): families (linear, MLP, CNN, ResNet, ViT, MLP-Mixer,
ConvMixer), input preprocessing (7/14/28 px, 1 or 3 channels), optimisers, augmentation, label
smoothing, epochs and seeds all vary. Each model is trained to the end of its cosine schedule.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gkt.data import ImageDataset, load_split, stratified_subset
from gkt.models.checkpoint import checkpoint_paths, load_checkpoint, read_sidecar, save_checkpoint
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.preprocess import Preprocess
from gkt.training import Recipe, convergence_check, evaluate, train_supervised
from gkt.utils import GktError, cache_home, stable_hash, write_json

log = logging.getLogger(__name__)

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
ZOO_VERSION = 2
CONVERGENCE_TOLERANCE = 0.003  # a finished model gains at most 0.3 points from one more epoch
CHECK_LR = 1e-3  # the transfer's default learning rate: gains at this lr must not be mere training gains


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    arch: str
    recipe: Recipe
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 28
    channels: int = 1
    mean: tuple[float, ...] = FMNIST_MEAN
    std: tuple[float, ...] = FMNIST_STD

    def arch_spec(self, num_classes: int = 10) -> ArchSpec:
        return ArchSpec("zoo", self.arch, num_classes, self.channels, self.input_size, dict(self.arch_kwargs))

    def preprocess(self) -> Preprocess:
        return Preprocess(self.input_size, self.channels, self.mean, self.std)

    def key(self, train_fraction: float = 1.0) -> str:
        """Cache key: changes whenever anything that shapes the trained weights changes."""
        return stable_hash([ZOO_VERSION, self.arch_spec().to_dict(), self.preprocess().to_dict(),
                            self.recipe.to_dict(), train_fraction])


DEFAULT_ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("linear-7px", "linear", "linear", Recipe(15, "sgd", 0.05, 0.0, 128), input_size=7),
    ZooEntry("linear", "linear", "linear", Recipe(15, "sgd", 0.02, 0.0, 128, seed=1)),
    ZooEntry("mlp-14px", "mlp", "mlp", Recipe(20, "adamw", 1e-3, 0.05, 128, seed=2), {"hidden": [512]},
             input_size=14),
    ZooEntry("mlp", "mlp", "mlp", Recipe(20, "sgd", 0.05, 5e-4, 128, seed=3), {"hidden": [256]}),
    ZooEntry("mlp-deep", "mlp", "mlp",
             Recipe(25, "adamw", 1e-3, 0.05, 128, label_smoothing=0.1, augment=("erase",), seed=4),
             {"hidden": [512, 256], "dropout": 0.2}),
    ZooEntry("cnn", "cnn", "cnn", Recipe(5, "sgd", 0.05, 5e-4, 128, seed=5), {"channels": [16, 32]}),
    ZooEntry("resnet", "resnet", "resnet",
             Recipe(5, "sgd", 0.1, 5e-4, 128, augment=("flip", "crop"), warmup_epochs=0.5, seed=6),
             {"widths": [16, 32, 64], "blocks": [1, 1, 1]}),
    ZooEntry("convmixer", "convmixer", "convmixer",
             Recipe(4, "adamw", 2e-3, 0.05, 128, label_smoothing=0.1, augment=("crop",), warmup_epochs=0.5, seed=7),
             {"dim": 128, "depth": 4, "kernel_size": 5, "patch_size": 4}),
    ZooEntry("vit", "vit", "vit",
             Recipe(5, "adamw", 1e-3, 0.05, 128, augment=("flip",), warmup_epochs=0.5, seed=8),
             {"patch_size": 7, "embed_dim": 96, "depth": 4, "num_heads": 3}, channels=3,
             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    ZooEntry("mixer", "mixer", "mixer",
             Recipe(4, "adamw", 1e-3, 0.05, 128, label_smoothing=0.1, warmup_epochs=0.5, seed=9),
             {"patch_size": 7, "num_blocks": 4, "embed_dim": 128}),
)


def zoo_dir_default() -> Path:
    return cache_home() / "zoo"


def get_entry(name: str, entries: tuple[ZooEntry, ...] = DEFAULT_ZOO) -> ZooEntry:
    for entry in entries:
        if entry.name == name:
            return entry
    raise GktError(f"no zoo model {name!r}; the zoo has: {', '.join(e.name for e in entries)}")


def entry_path(entry: ZooEntry, zoo_dir: str | Path | None = None, train_fraction: float = 1.0) -> Path:
    return Path(zoo_dir or zoo_dir_default()) / f"{entry.name}-{entry.key(train_fraction)}.safetensors"


def is_built(path: Path) -> bool:
    """Both files of the checkpoint exist: the sidecar is written last, so a build killed in between
    (weights without sidecar) counts as not built and is trained again."""
    return all(p.is_file() for p in checkpoint_paths(path))


def _find_built(name: str, zoo_dir: str | Path | None) -> Path | None:
    """The checkpoint of zoo model ``name``: the current recipe's, else any build of that name (newest)."""
    directory = Path(zoo_dir or zoo_dir_default())
    exact = entry_path(get_entry(name), zoo_dir) if name in {e.name for e in DEFAULT_ZOO} else None
    if exact is not None and is_built(exact):
        return exact
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{16}\.safetensors")  # not "mlp-14px-…" for "mlp"
    candidates = sorted((p for p in directory.glob(f"{name}-*.safetensors") if pattern.fullmatch(p.name) and is_built(p)),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[0] if candidates else None


def load_zoo_model(name: str, zoo_dir: str | Path | None = None) -> Classifier:
    path = _find_built(name, zoo_dir)
    if path is None:
        get_entry(name)  # unknown names get the list of zoo models
        raise GktError(f"zoo model {name!r} is not built in {zoo_dir or zoo_dir_default()}; run "
                       f"`gkt zoo build --only {name}` (or `gkt zoo build` for the whole zoo)")
    return load_checkpoint(path)


@dataclass
class ZooRecord:
    name: str
    family: str
    params: int
    test_acc: float
    recipe: str
    train_seconds: float
    convergence: dict[str, float] | None
    path: Path
    cached: bool


def _record(entry_name: str, family: str, path: Path, cached: bool) -> ZooRecord:
    meta = read_sidecar(path)
    prov = meta["provenance"]
    return ZooRecord(entry_name, family, prov["params"], prov["test_acc"], prov["recipe_text"],
                     prov["train_seconds"], prov.get("convergence"), checkpoint_paths(path)[0], cached)


def build_zoo(entries: tuple[ZooEntry, ...] = DEFAULT_ZOO, *, zoo_dir: str | Path | None = None,
              device: torch.device | None = None, data_dir: str | None = None, check: bool = True,
              train_fraction: float = 1.0, train_set: ImageDataset | None = None,
              test_set: ImageDataset | None = None) -> list[ZooRecord]:
    """Train every entry that is not cached yet (cache key = recipe + architecture + preprocessing) and
    save it as a gkt checkpoint with its test accuracy and convergence check."""
    device = device or torch.device("cpu")
    zoo_dir = Path(zoo_dir or zoo_dir_default())
    records = []
    for entry in entries:
        path = entry_path(entry, zoo_dir, train_fraction)
        if is_built(path):
            records.append(_record(entry.name, entry.family, path, cached=True))
            continue
        if train_set is None:
            full = load_split("fmnist", "train", data_dir=data_dir, val_fraction=0)
            train_set = stratified_subset(full, fraction=train_fraction, seed=0) if train_fraction < 1 else full
        if test_set is None:
            test_set = load_split("fmnist", "test", data_dir=data_dir)
        torch.manual_seed(entry.recipe.seed)
        model = Classifier.create(entry.arch_spec(len(train_set.class_names)), entry.preprocess(),
                                  train_set.class_names, name=f"zoo:{entry.name}")
        start = time.perf_counter()
        train_supervised(model, train_set, entry.recipe, device, desc=f"zoo {entry.name}")
        seconds = time.perf_counter() - start
        acc = evaluate(model, test_set, device)
        model.provenance = {"zoo": entry.name, "family": entry.family, "recipe": entry.recipe.to_dict(),
                            "recipe_text": entry.recipe.describe(), "train_fraction": train_fraction,
                            "train_data": train_set.name, "test_acc": acc, "train_seconds": round(seconds, 1),
                            "params": model.num_parameters()}
        if check:
            model.provenance["convergence"] = _check(model, train_set, test_set, device, acc)
        save_checkpoint(model.cpu(), path, overwrite=True)  # at most the weights of a killed build are there
        log.info("zoo %s: test acc %.4f in %.0fs", entry.name, acc, seconds)
        records.append(_record(entry.name, entry.family, path, cached=False))
    return records


def _check(model: Classifier, train_set: ImageDataset, test_set: ImageDataset, device: torch.device,
           acc: float, lr: float = CHECK_LR) -> dict[str, Any]:
    result: dict[str, Any] = convergence_check(model, train_set, test_set, device, lr=lr, baseline_acc=acc)
    result["passed"] = result["delta"] <= CONVERGENCE_TOLERANCE
    return result


def check_zoo(zoo_dir: str | Path | None = None, entries: tuple[ZooEntry, ...] = DEFAULT_ZOO, lr: float = CHECK_LR,
              device: torch.device | None = None, data_dir: str | None = None) -> list[ZooRecord]:
    """(Re-)run the convergence check of every built model at ``lr``; the result is stored in its sidecar."""
    device = device or torch.device("cpu")
    train_set = load_split("fmnist", "train", data_dir=data_dir, val_fraction=0)
    test_set = load_split("fmnist", "test", data_dir=data_dir)
    for record in list_zoo(zoo_dir, entries):
        model = load_checkpoint(record.path)
        result = _check(model, train_set, test_set, device, record.test_acc, lr)
        _, sidecar = checkpoint_paths(record.path)
        meta = read_sidecar(record.path)
        meta["provenance"]["convergence"] = result
        write_json(sidecar, meta)
        log.info("zoo %s: one more epoch at lr %g changes test accuracy by %+.2f points", record.name, lr,
                 100 * result["delta"])
    return list_zoo(zoo_dir, entries)


def scaled_entries(entries: tuple[ZooEntry, ...], epochs: int | None) -> tuple[ZooEntry, ...]:
    """The same recipes with a different epoch budget (for quick tests and smoke runs)."""
    if epochs is None:
        return entries
    return tuple(replace(e, recipe=replace(e.recipe, epochs=epochs)) for e in entries)


def list_zoo(zoo_dir: str | Path | None = None, entries: tuple[ZooEntry, ...] = DEFAULT_ZOO,
             train_fraction: float = 1.0) -> list[ZooRecord]:
    """The built models among ``entries`` (current recipes), in zoo order."""
    records = []
    for entry in entries:
        path = entry_path(entry, zoo_dir, train_fraction)
        if is_built(path):
            records.append(_record(entry.name, entry.family, path, cached=True))
    return records
