"""The embedded zoo's catalogue and the ``zoo:`` source (loads built models; never trains)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import cache_home
from gkt.models.checkpoint import checkpoint_paths, load_checkpoint
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.preprocess import Preprocess

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
ZOO_VERSION = 3  # 3: trained on a fixed thread count with deterministic algorithms


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
    ZooEntry("cnn-14px", "cnn", "cnn", Recipe(5, "sgd", 0.05, 5e-4, 128, seed=10), {"channels": [8, 16]},
             input_size=14),
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


def find_built(name: str, zoo_dir: str | Path | None = None, exact: Path | None = None) -> Path | None:
    """The checkpoint of zoo model ``name``: ``exact`` (default: the current recipe's) when built, else the
    newest build of that name (e.g. a smoke build with fewer epochs); ``zoo:NAME``, ``zoo list`` and
    ``--models zoo`` all find models this way, so they agree."""
    directory = Path(zoo_dir or zoo_dir_default())
    if exact is None and name in {e.name for e in DEFAULT_ZOO}:
        exact = entry_path(get_entry(name), zoo_dir)
    if exact is not None and is_built(exact):
        return exact
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{16}\.safetensors")  # not "mlp-14px-…" for "mlp"
    candidates = sorted((p for p in directory.glob(f"{name}-*.safetensors") if pattern.fullmatch(p.name) and is_built(p)),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[0] if candidates else None


def load_zoo_model(name: str, zoo_dir: str | Path | None = None) -> Classifier:
    path = find_built(name, zoo_dir)
    if path is None:
        get_entry(name)  # unknown names get the list of zoo models
        raise GktError(f"zoo model {name!r} is not built in {zoo_dir or zoo_dir_default()}; run "
                       f"`gkt zoo build --only {name}` (or `gkt zoo build` for the whole zoo)")
    try:
        return load_checkpoint(path)
    except GktError as exc:
        raise GktError(f"zoo model {name!r}: {exc}; `gkt zoo build --only {name}` rebuilds it") from exc
