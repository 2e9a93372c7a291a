"""Image datasets: in-memory tensors and image folders, and batch iteration."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from gkt.core.errors import GktError
from gkt.core.hashing import hash_order, stable_hash
from gkt.core.io import FileStamp, file_stamp
from gkt.core.limits import check_batch_memory
from gkt.core.runtime import available_cpus, threads_beside
from gkt.data.decode import (
    BadImagePolicy,
    ImageIndex,
    UnreadableImage,
    bad_image_policy,
    check_shared_memory,
    decode_image,
    note_skipped,
    read_encoded,
    unreadable_message,
)
from gkt.data.views import View, apply_views, canvas_shape, square_view


def pixel_mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (rounded to 4 places, std at least 1e-3) of ``uint8`` images as [0, 1] pixels."""
    x = images.float().div_(255)
    return (tuple(round(v, 4) for v in x.mean((0, 2, 3)).tolist()),
            tuple(round(v, 4) for v in x.std((0, 2, 3)).clamp_min(1e-3).tolist()))


class ImageDataset(ABC):
    """A labelled image dataset that returns raw ``uint8`` batches of a fixed shape."""

    def __init__(self, name: str, labels: torch.Tensor, class_names: Sequence[str],
                 image_shape: tuple[int, int, int]):
        self.name = name
        self.labels = labels.long()
        self.class_names = list(class_names)
        self.all_class_names = tuple(class_names)  # before a class selection (set by class_subset)
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

    def load_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        """The readable images of ``indices`` and ``(position in indices, reason)`` for the others."""
        return self.load(indices), []

    def at_decode_size(self, size: int) -> ImageDataset:
        """The dataset decoded at ``size`` px (encoded datasets); fixed-size datasets return themselves."""
        return self

    def at_decode_plan(self, views: tuple[View, ...]) -> ImageDataset:
        """The dataset decoded once per image into the canvas of ``views`` (encoded datasets; see
        :mod:`gkt.data.views`); fixed-size datasets return themselves."""
        return self

    @property
    def decode_plan(self) -> tuple[View, ...]:
        """The views each batch holds (empty: a batch is plain images)."""
        return ()

    def content_id(self) -> str | None:
        """A hash of the images' contents (or of what identifies them: the files' stamps,
        :func:`~gkt.core.io.file_stamp`)."""
        return None

    def unreadable_rows(self) -> dict[int, str]:
        """Rows found unreadable (and skipped) by earlier passes and not yet dropped: row -> reason."""
        return {}

    def mark_unreadable(self, row: int, reason: str) -> None:
        """Record that ``row`` cannot be decoded: fail (naming it), or skip it under ``--bad-images skip``."""
        raise GktError(f"{self.name}: row {row} is unreadable ({reason})")

    def drop_unreadable(self) -> None:
        """Drop the rows found unreadable, in place (after a pass over every row, in order)."""

    def pixel_stats(self, max_samples: int = 5000) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of ``[0, 1]`` pixels over up to ``max_samples`` evenly spaced images."""
        idx = torch.linspace(0, len(self) - 1, min(len(self), max_samples)).long()
        return pixel_mean_std(self.load(idx))

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

    def content_id(self) -> str:
        return hashlib.sha256(self.images.contiguous().numpy().tobytes()).hexdigest()

    def subset(self, indices: torch.Tensor, tag: str) -> TensorImageDataset:
        return TensorImageDataset(f"{self.name}[{tag}]", self.images[indices], self.labels[indices],
                                  self.class_names)


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# The decode size of image folders and other encoded datasets when nothing else sets it.
DEFAULT_DECODE_SIZE = 224


class EncodedImageDataset(ImageDataset):
    """Images stored encoded (JPEG/PNG files, rows of a Hugging Face dataset), decoded per batch, each image
    once, into the views of its decode plan: by default resized (shorter side, antialiased) to the decode
    size ``image_size`` and centre-cropped to a square (:func:`gkt.data.views.square_view`); planned for
    models, every model's own eval view (:meth:`at_decode_plan`)."""

    def __init__(self, name: str, labels: torch.Tensor, class_names: Sequence[str], image_size: int, channels: int,
                 bad_images: BadImagePolicy | None = None):
        super().__init__(name, labels, class_names, (channels, image_size, image_size))
        self.bad_images = bad_image_policy(bad_images)
        self._unreadable: dict[int, str] = {}
        self.channels = channels
        self.views: tuple[View, ...] = (square_view(image_size),)

    @abstractmethod
    def encoded(self, i: int) -> torch.Tensor:
        """Row ``i``'s encoded bytes ``uint8 [n]``; raises :class:`UnreadableImage`."""

    @abstractmethod
    def source(self, i: int) -> str:
        """How messages name row ``i`` (its file, or the dataset and row)."""

    @abstractmethod
    def _take(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the per-row state other than labels (files, row numbers), in place."""

    def _recorded(self, i: int, reason: str) -> None:
        """Remember across commands that row ``i`` is unreadable (where the dataset can)."""

    def decode(self, i: int) -> torch.Tensor:
        return apply_views(decode_image(self.encoded(i), self.channels), self.views)

    def load_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        images, bad = [], []
        for pos, i in enumerate(indices.tolist()):
            try:
                images.append(self.decode(i))
            except UnreadableImage as exc:
                bad.append((pos, str(exc)))
        return (torch.stack(images) if images else torch.empty((0, *self.image_shape), dtype=torch.uint8)), bad

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        images, bad = self.load_batch(indices)
        if bad:
            pos, reason = bad[0]
            raise GktError(unreadable_message(self.source(int(indices[pos])), reason))
        return images

    def subset(self, indices: torch.Tensor, tag: str) -> EncodedImageDataset:
        sub = copy.copy(self)
        sub.name, sub.labels, sub._unreadable = f"{self.name}[{tag}]", self.labels[indices], {}
        sub._take(indices)
        return sub

    def at_decode_size(self, size: int) -> EncodedImageDataset:
        return self.at_decode_plan((square_view(size),))

    def at_decode_plan(self, views: tuple[View, ...]) -> EncodedImageDataset:
        views = tuple(dict.fromkeys(views))
        if not views:
            raise ValueError("a decode plan needs at least one view")
        if views == self.views:
            return self
        planned = copy.copy(self)
        planned.views, planned.image_shape = views, canvas_shape(views, self.channels)
        planned._unreadable = dict(self._unreadable)
        return planned

    @property
    def decode_plan(self) -> tuple[View, ...]:
        return self.views

    def fingerprint(self) -> str:
        """As :meth:`ImageDataset.fingerprint`, plus the decode plan unless it is the plain square decode."""
        base = super().fingerprint()
        return base if self.views == (square_view(self.image_shape[1]),) else \
            stable_hash([base, [repr(v) for v in self.views]])

    def unreadable_rows(self) -> dict[int, str]:
        return dict(self._unreadable)

    def mark_unreadable(self, row: int, reason: str) -> None:
        self._recorded(row, reason)
        if self.bad_images == "fail":
            raise GktError(unreadable_message(self.source(row), reason))
        note_skipped(self.source(row), reason)
        self._unreadable[row] = reason

    def drop_unreadable(self) -> None:
        if not self._unreadable:
            return
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[list(self._unreadable)] = False
        rows = keep.nonzero().squeeze(1)
        self.labels, self._unreadable = self.labels[rows], {}
        self._take(rows)

    def pixel_stats(self, max_samples: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """As :meth:`ImageDataset.pixel_stats` over at most 256 decoded images (decoding is the cost): the first
        readable ones in an order fixed by each image's source (:func:`hash_order`), so the statistics do not
        change when unreadable images found meanwhile are left out of the listing."""
        order, want = hash_order([self.source(i) for i in range(len(self))]), min(len(self), max_samples, 256)
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(order)))
        decoded: dict[int, torch.Tensor] = {}  # hash rank -> image
        start = 0
        while len(decoded) < want and start < len(order):  # more candidates only for those found unreadable
            rows = order[start:start + want - len(decoded)].sort().values
            start += len(rows)
            for images, _, idx in iterate_batches(self.subset(rows, "pixel-stats"), 64):
                decoded.update(zip(rank[rows[idx]].tolist(), images))
        if not decoded:
            raise GktError(f"{self.name}: none of the images sampled for pixel statistics can be read; check the "
                           "data (every image left out as unreadable?)")
        return pixel_mean_std(torch.stack([decoded[r] for r in sorted(decoded)]))


class FolderImageDataset(EncodedImageDataset):
    """``root/<class>/*.jpg``: files listed (with their file stamps, never opened) up front, decoded per batch."""

    def __init__(self, name: str, files: Sequence[Path], labels: torch.Tensor, class_names: Sequence[str],
                 image_size: int, channels: int, bad_images: BadImagePolicy | None = None,
                 file_stats: Sequence[FileStamp] | None = None, index: ImageIndex | None = None):
        super().__init__(name, labels, class_names, image_size, channels, bad_images)
        self.files = list(files)
        self.file_stats = list(file_stats) if file_stats is not None else \
            [file_stamp(st) for st in map(os.stat, self.files)]
        self.index = index

    def encoded(self, i: int) -> torch.Tensor:
        return read_encoded(self.files[i])

    def source(self, i: int) -> str:
        return str(self.files[i])

    def _take(self, rows: torch.Tensor) -> None:
        self.files = [self.files[i] for i in rows.tolist()]
        self.file_stats = [self.file_stats[i] for i in rows.tolist()]

    def _recorded(self, i: int, reason: str) -> None:
        if self.index is not None:
            self.index.record_bad(str(self.files[i]), self.file_stats[i], reason)

    def content_id(self) -> str:
        return stable_hash([(str(p), *st) for p, st in zip(self.files, self.file_stats)], 64)

    def pixel_stats(self, max_samples: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Cached in the folder's index, keyed by the listing's identity and the decode size."""
        if self.index is None:
            return super().pixel_stats(max_samples)
        key = stable_hash([self.content_id(), self.image_shape, min(max_samples, 256)], 24)
        if key not in self.index.stats:
            self.index.record_stats(key, list(super().pixel_stats(max_samples)))
        mean, std = self.index.stats[key]
        return tuple(mean), tuple(std)


def _list_class_dir(class_dir: Path) -> list[tuple[Path, os.stat_result | str]]:
    """Image files under ``class_dir`` (recursively, sorted, linked folders followed once; hidden files and
    folders such as macOS ``._*`` and ``.ipynb_checkpoints`` left out) with their stat results, or why a
    file cannot be stat'ed (a dangling link); nothing is opened. A folder that cannot be listed is an error."""

    def unlistable(exc: OSError) -> None:
        raise GktError(f"{exc.filename}: cannot list this folder ({exc.strerror}); fix its permissions or "
                       "remove it from the data folder")

    found: list[tuple[Path, os.stat_result | str]] = []
    seen = {os.path.realpath(class_dir)}
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=unlistable, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in seen)
        seen.update(os.path.realpath(os.path.join(dirpath, d)) for d in dirnames)  # linked folders: once each
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                    # a pipe or device would block or never end when read: unreadable, never opened
                    found.append((path, st if stat.S_ISREG(st.st_mode) else
                                  "not a regular file (a pipe or a device)"))
                except OSError as exc:
                    found.append((path, "a link to a missing file" if path.is_symlink() else
                                  f"cannot be read: {exc.strerror}"))
    return found


def load_image_folder(root: str | os.PathLike, image_size: int = DEFAULT_DECODE_SIZE, channels: int = 3,
                      bad_images: BadImagePolicy | None = None, class_names: Sequence[str] | None = None
                      ) -> FolderImageDataset:
    """An ImageNet-layout split directory: one sub-folder per class, class names = folder names. Files are
    listed, not opened: unreadable ones are found when decoded (or known from an earlier command)."""
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise GktError(f"image folder {root} does not exist")
    policy = bad_image_policy(bad_images)
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(class_names) if class_names is not None else found
    if not names:
        raise GktError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise GktError(f"{root}: class folders {unknown} are not among the training classes")
    index = ImageIndex(str(root))
    files: list[Path] = []
    stats: list[FileStamp] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        for path, st in _list_class_dir(class_dir):
            stamp = file_stamp(st) if isinstance(st, os.stat_result) else None
            reason = index.known_bad(str(path), stamp) if stamp is not None else st
            if reason is not None:
                if policy == "fail":
                    raise GktError(unreadable_message(str(path), reason))
                note_skipped(str(path), reason)
                continue
            files.append(path)
            stats.append(stamp)
            labels.append(label)
    index.save()
    dataset = FolderImageDataset(f"folder:{root.resolve()}", files, torch.tensor(labels, dtype=torch.long),
                                 names, image_size, channels, policy, stats, index)
    empty = [names[c] for c, n in enumerate(dataset.class_counts().tolist()) if n == 0]
    if empty and class_names is None:
        raise GktError(f"{root}: class folder(s) {empty} contain no images")
    return dataset


def _import_decoders() -> None:
    """Import the image decoders in this process before DataLoader workers fork from it: a worker would
    otherwise import torchvision itself, seconds per pass (its package import pulls in ``torch._dynamo``)."""
    import torchvision.io  # noqa: F401
    from torchvision.transforms.v2 import functional  # noqa: F401


def default_workers(models_on_gpu: bool = False) -> int:
    """Decoding processes for encoded datasets, out of the CPUs this process may use (a study worker: its
    share), at least 1, at most 8: half of them while the models compute on the CPU too (the other half run
    the models' threads), all but one when the models run on a GPU."""
    cpus = available_cpus()
    return max(1, min(8, cpus - 1 if models_on_gpu else cpus // 2))


class _Batches(TorchDataset):
    def __init__(self, dataset: ImageDataset, chunks: list[torch.Tensor]):
        self.dataset, self.chunks = dataset, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
        idx = self.chunks[i]
        images, bad = self.dataset.load_batch(idx)
        return images, self.dataset.labels[idx], idx, bad


def iterate_batches(dataset: ImageDataset, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, drop_last: bool = False, workers: int | None = None,
                    pin_memory: bool = False, shard: tuple[int, int] = (0, 1)
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(raw uint8 images, labels, dataset indices)``. In-memory datasets are sliced directly;
    encoded ones decode in ``workers`` DataLoader processes (``None``: :func:`default_workers`, for a GPU
    consumer when ``pin_memory``), each batch once. ``shard=(rank, world)`` yields rank's share ``batch[rank::world]`` of every batch of the same
    (seeded) order, as ``DistributedSampler`` does. Unreadable images fail the pass, or under
    ``--bad-images skip`` are left out of their batch; a pass over every row in order then drops them from
    ``dataset`` (so its ``labels`` match what the pass yielded)."""
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    chunks = list(order.split(batch_size))
    if drop_last and chunks and len(chunks[-1]) < batch_size:
        chunks.pop()
    rank, world = shard
    if world > 1:
        chunks = [chunk[rank::world] for chunk in chunks]
    if isinstance(dataset, TensorImageDataset) and not workers:
        for idx in chunks:
            images = dataset.images[idx]
            yield (images.pin_memory() if pin_memory else images), dataset.labels[idx], idx
        return
    known = dataset.unreadable_rows()
    if known:
        unknown = torch.ones(n, dtype=torch.bool)
        unknown[list(known)] = False
        chunks = [chunk[unknown[chunk]] for chunk in chunks]
    workers = default_workers(models_on_gpu=pin_memory) if workers is None else workers  # pinned: a GPU consumer
    if isinstance(dataset, EncodedImageDataset):
        _import_decoders()
    # Its own generator: the loader must not draw from torch's global RNG (that would shift dropout masks).
    workers = min(workers, len(chunks))
    loader = DataLoader(_Batches(dataset, [c for c in chunks if len(c)]), batch_size=None, shuffle=False,
                        num_workers=workers, pin_memory=pin_memory, persistent_workers=False,
                        generator=torch.Generator().manual_seed(0))
    check_shared_memory(workers, max(map(len, chunks), default=0) * math.prod(dataset.image_shape))
    check_batch_memory(max(map(len, chunks), default=0), dataset.image_shape, bytes_per_value=2 * workers + 1,
                       what=f"decoding {dataset.name}: {2 * workers + 1} batch(es) in flight, each")
    with threads_beside(workers):  # the consumer's torch threads leave the decoding workers their CPUs
        for images, labels, idx, bad in loader:
            if bad:
                keep = torch.ones(len(idx), dtype=torch.bool)
                for pos, reason in bad:
                    dataset.mark_unreadable(int(idx[pos]), reason)
                    keep[pos] = False
                labels, idx = labels[keep], idx[keep]
            if len(idx):
                yield images, labels, idx
    if not shuffle and world == 1 and not drop_last:
        dataset.drop_unreadable()
