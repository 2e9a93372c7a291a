"""Image datasets: in-memory tensors and image folders, and batch iteration."""

from __future__ import annotations

import hashlib
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash


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
