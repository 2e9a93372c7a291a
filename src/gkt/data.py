"""Datasets: Fashion-MNIST (IDX files), image folders, stratified subsets and seeded splits.

Every dataset yields *raw* images as ``uint8`` tensors ``[B, C, H, W]``; each model normalises
them with its own :class:`gkt.models.preprocess.Preprocess`, so one batch serves several models.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import os
import shutil
import struct
import urllib.error
import urllib.request
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from gkt.utils import GktError, cache_home, stable_hash

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "sudo apt-get install dataset-fashion-mnist"


@dataclass(frozen=True)
class IdxFile:
    """An official Fashion-MNIST file; the checksum is over the *decompressed* IDX payload,
    so re-compressed copies (as Debian ships them) verify too."""

    name: str
    sha256: str
    shape: tuple[int, ...]


FASHION_MNIST_FILES = {
    ("train", "images"): IdxFile("train-images-idx3-ubyte.gz",
                                 "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                                 (60000, 28, 28)),
    ("train", "labels"): IdxFile("train-labels-idx1-ubyte.gz",
                                 "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", (60000,)),
    ("test", "images"): IdxFile("t10k-images-idx3-ubyte.gz",
                                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                                (10000, 28, 28)),
    ("test", "labels"): IdxFile("t10k-labels-idx1-ubyte.gz",
                                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", (10000,)),
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_payload(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise GktError(f"{path}: cannot read ({exc}); the file is corrupt or truncated — delete it and "
                       f"reinstall/re-download it") from exc


def parse_idx(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX byte string (magic ``00 00 <dtype> <ndim>``, big-endian dims, data)."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0:
        raise GktError(f"{source}: not an IDX file (bad magic number)")
    dtype_code, ndim = payload[2], payload[3]
    if dtype_code not in _IDX_DTYPES or ndim == 0:
        raise GktError(f"{source}: unsupported IDX type 0x{dtype_code:02x} with {ndim} dimensions")
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise GktError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", payload[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(payload) - header != expected:
        raise GktError(f"{source}: IDX data has {len(payload) - header} bytes but shape {shape} needs "
                       f"{expected}; the file is truncated or corrupt")
    return np.frombuffer(payload, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped); verify the decompressed payload's SHA-256 if given."""
    path = Path(path)
    if not path.is_file():
        raise GktError(f"{path}: file not found")
    payload = _read_payload(path)
    if sha256 is not None and hashlib.sha256(payload).hexdigest() != sha256:
        raise GktError(f"{path}: checksum mismatch (expected SHA-256 {sha256[:12]}… of the decompressed file); "
                       "the file is corrupt or not the official one")
    return parse_idx(payload, str(path))


def _fashion_mnist_dir_candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    candidates = []
    if data_dir:
        candidates.append(Path(data_dir))
    if os.environ.get("GKT_DATA"):
        candidates.append(Path(os.environ["GKT_DATA"]))
    candidates += [DEBIAN_FASHION_MNIST_DIR, cache_home() / "data" / "fashion-mnist"]
    return candidates


def _has_all_files(directory: Path) -> bool:
    return all((directory / f.name).is_file() for f in FASHION_MNIST_FILES.values())


def download_fashion_mnist(target: Path, base_url: str = FASHION_MNIST_URL, timeout: float = 30) -> Path:
    """Download the official files into ``target``, verifying each checksum before it is kept."""
    target.mkdir(parents=True, exist_ok=True)
    for spec in FASHION_MNIST_FILES.values():
        final = target / spec.name
        if final.is_file():
            continue
        tmp = target / (spec.name + ".part")
        with urllib.request.urlopen(base_url + spec.name, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        try:
            payload = gzip.decompress(tmp.read_bytes())
        except (OSError, EOFError) as exc:
            tmp.unlink(missing_ok=True)
            raise GktError(f"downloaded {spec.name} is not a valid gzip file ({exc})") from exc
        if hashlib.sha256(payload).hexdigest() != spec.sha256:
            tmp.unlink(missing_ok=True)
            raise GktError(f"downloaded {spec.name} failed its SHA-256 check")
        os.replace(tmp, final)
    return target


def locate_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find the Fashion-MNIST directory: ``data_dir``, ``$GKT_DATA``, the Debian package, the cache;
    else download into the cache when the network allows; else a clear error."""
    candidates = _fashion_mnist_dir_candidates(data_dir)
    for directory in candidates:
        if _has_all_files(directory):
            return directory
    if data_dir and Path(data_dir).is_dir():
        missing = [f.name for f in FASHION_MNIST_FILES.values() if not (Path(data_dir) / f.name).is_file()]
        raise GktError(f"--data-dir {data_dir} lacks {', '.join(missing)}")
    if download:
        try:
            return download_fashion_mnist(candidates[-1])
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = f"download failed: {exc}"
        except GktError as exc:
            reason = f"download failed verification: {exc}"
    else:
        reason = "download disabled"
    searched = ", ".join(str(c) for c in candidates)
    raise GktError(f"Fashion-MNIST not found (searched {searched}; {reason}). Install it with "
                   f"`{APT_HINT}`, or pass --data-dir DIR / set GKT_DATA to a directory holding the four "
                   "official IDX .gz files.")


class ImageDataset(ABC):
    """A labelled image dataset that returns raw ``uint8`` batches of a fixed shape."""

    def __init__(self, name: str, labels: torch.Tensor, class_names: Sequence[str],
                 image_shape: tuple[int, int, int]):
        self.name = name
        self.labels = labels.long()
        self.class_names = list(class_names)
        self.image_shape = image_shape
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise GktError(f"{name}: labels outside [0, {len(self.class_names)}) for its "
                           f"{len(self.class_names)} classes")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def load(self, indices: torch.Tensor) -> torch.Tensor:
        """Raw images ``uint8 [len(indices), C, H, W]``."""

    @abstractmethod
    def subset(self, indices: torch.Tensor, tag: str) -> ImageDataset:
        """A dataset of the given rows; ``tag`` names the selection in the dataset's identity."""

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """Identity for caches: name, shape, class names and the labels' hash."""
        return stable_hash([self.name, self.image_shape, self.class_names,
                            hashlib.sha256(self.labels.numpy().tobytes()).hexdigest()])


class TensorImageDataset(ImageDataset):
    """Images held in memory as one ``uint8 [N, C, H, W]`` tensor (Fashion-MNIST, digits, ...)."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise GktError(f"{name}: images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise GktError(f"{name}: {len(images)} images but {len(labels)} labels")
        super().__init__(name, labels, class_names, tuple(images.shape[1:]))
        self.images = images

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]

    def subset(self, indices: torch.Tensor, tag: str) -> TensorImageDataset:
        return TensorImageDataset(f"{self.name}[{tag}]", self.images[indices], self.labels[indices],
                                  self.class_names)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class FolderImageDataset(ImageDataset):
    """``root/<class>/*.jpg`` decoded lazily, resized (shorter side) and centre-cropped to ``image_size``."""

    def __init__(self, name: str, files: Sequence[Path], labels: torch.Tensor, class_names: Sequence[str],
                 image_size: int, channels: int):
        super().__init__(name, labels, class_names, (channels, image_size, image_size))
        self.files = list(files)

    def _decode(self, path: Path) -> torch.Tensor:
        from PIL import Image

        c, size, _ = self.image_shape
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if c == 3 else "L")
                scale = size / min(img.size)
                w, h = max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))
                img = img.resize((w, h), Image.BILINEAR)
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
                array = np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise GktError(f"{path}: unreadable image ({exc}); fix or remove it, or pass --bad-images skip") from exc
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(array.copy())

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._decode(self.files[int(i)]) for i in indices])

    def subset(self, indices: torch.Tensor, tag: str) -> FolderImageDataset:
        return FolderImageDataset(f"{self.name}[{tag}]", [self.files[int(i)] for i in indices],
                                  self.labels[indices], self.class_names, self.image_shape[1], self.image_shape[0])


BadImagePolicy = Literal["fail", "skip"]


def _image_is_readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # PIL raises many types for broken files
        return False


def load_image_folder(root: str | os.PathLike, image_size: int = 224, channels: int = 3,
                      bad_images: BadImagePolicy = "fail", class_names: Sequence[str] | None = None
                      ) -> FolderImageDataset:
    """An ImageNet-layout split directory: one sub-folder per class, class names = folder names."""
    root = Path(root)
    if not root.is_dir():
        raise GktError(f"image folder {root} does not exist")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    names = list(class_names) if class_names is not None else found
    if not names:
        raise GktError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise GktError(f"{root}: class folders {unknown} are not among the training classes")
    files: list[Path] = []
    labels: list[int] = []
    bad: list[Path] = []
    for label, name in enumerate(names):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        images = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        for path in images:
            if _image_is_readable(path):
                files.append(path)
                labels.append(label)
            else:
                bad.append(path)
    if bad and bad_images == "fail":
        listed = ", ".join(str(p) for p in bad[:5]) + (" …" if len(bad) > 5 else "")
        raise GktError(f"{root}: {len(bad)} unreadable image(s): {listed}. Fix or remove them, or pass "
                       "--bad-images skip to leave them out with a warning")
    if bad:
        warnings.warn(f"{root}: skipped {len(bad)} unreadable image(s)", stacklevel=2)
    dataset = FolderImageDataset(f"folder:{root.resolve()}", files, torch.tensor(labels, dtype=torch.long),
                                 names, image_size, channels)
    empty = [names[c] for c, n in enumerate(dataset.class_counts().tolist()) if n == 0]
    if empty and class_names is None:
        raise GktError(f"{root}: class folder(s) {empty} contain no readable images")
    return dataset


def load_fashion_mnist(split: Literal["train", "test"], data_dir: str | os.PathLike | None = None,
                       download: bool = True) -> TensorImageDataset:
    """The official train (60k) or test (10k) split as a :class:`TensorImageDataset`."""
    if split not in ("train", "test"):
        raise GktError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    directory = locate_fashion_mnist(data_dir, download=download)
    images = read_idx(directory / FASHION_MNIST_FILES[(split, "images")].name)
    labels = read_idx(directory / FASHION_MNIST_FILES[(split, "labels")].name)
    if images.ndim != 3 or labels.ndim != 1:
        raise GktError(f"{directory}: expected images [N, H, W] and labels [N], got {images.shape} and "
                       f"{labels.shape}")
    if len(images) != len(labels):
        raise GktError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise GktError(f"{directory}: label {int(labels.max())} out of range for the 10 Fashion-MNIST classes")
    return TensorImageDataset(f"fmnist:{split}", torch.from_numpy(images.copy())[:, None],
                              torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)


# ----------------------------------------------------------------------------- subsets and splits


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


# ----------------------------------------------------------------------------- data specs


# Further data specs: kind -> "module:function" loading one split with the keyword arguments of
# :func:`load_split` (``split, *, path, data_dir, val_fraction, seed, image_size, channels, bad_images``);
# imported on first use, so extensions may import this module.
DATA_SPEC_LOADERS: dict[str, str] = {"digits": "gkt.datasets_extra:digits_split"}
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
               val_fraction: float = 0.1, seed: int = 0, image_size: int = 224, channels: int = 3,
               bad_images: BadImagePolicy = "fail") -> ImageDataset:
    """Load one split of a data spec. ``val`` is carved (stratified, seeded) from ``train`` unless the
    dataset ships one; for Fashion-MNIST ``train`` then means the rest of the official train split.
    ``BASE@DOMAIN`` loads the same split of BASE with the domain's transform applied (same samples)."""
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.domain is not None:
        from gkt.domains import apply_domain

        base = replace(spec, domain=None)
        return apply_domain(load_split(base, split, data_dir=data_dir, val_fraction=val_fraction, seed=seed,
                                       image_size=image_size, channels=channels, bad_images=bad_images), spec.domain)
    if spec.kind in DATA_SPEC_LOADERS:
        module, _, function = DATA_SPEC_LOADERS[spec.kind].partition(":")
        loader = getattr(importlib.import_module(module), function)
        return loader(split, path=spec.path, data_dir=data_dir, val_fraction=val_fraction, seed=seed,
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


# ----------------------------------------------------------------------------- batching


class _Batches(TorchDataset):
    def __init__(self, dataset: ImageDataset, chunks: list[torch.Tensor]):
        self.dataset, self.chunks = dataset, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.chunks[i]
        return self.dataset.load(idx), self.dataset.labels[idx], idx


def iterate_batches(dataset: ImageDataset, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False, workers: int = 0,
                    pin_memory: bool = False, shard: tuple[int, int] = (0, 1)
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(raw uint8 images, labels, dataset indices)``. In-memory datasets are sliced directly;
    folder datasets decode in ``workers`` DataLoader processes. ``shard=(rank, world)`` yields rank's
    share ``batch[rank::world]`` of every batch of the same (seeded) order, as ``DistributedSampler`` does."""
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    chunks = list(order.split(batch_size))
    if drop_last and chunks and len(chunks[-1]) < batch_size:
        chunks.pop()
    rank, world = shard
    if world > 1:
        chunks = [chunk[rank::world] for chunk in chunks]
    if isinstance(dataset, TensorImageDataset) and workers == 0:
        for idx in chunks:
            images = dataset.images[idx]
            yield (images.pin_memory() if pin_memory else images), dataset.labels[idx], idx
        return
    # Its own generator: the loader must not draw from torch's global RNG (that would shift dropout masks).
    loader = DataLoader(_Batches(dataset, chunks), batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=pin_memory, persistent_workers=False, generator=torch.Generator().manual_seed(0))
    yield from loader
