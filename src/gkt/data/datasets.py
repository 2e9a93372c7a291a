"""Image datasets: in-memory tensors and image folders, and batch iteration."""

from __future__ import annotations

import copy
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from gkt.core.errors import GktError
from gkt.core.hashing import hash_order, stable_hash
from gkt.core.limits import check_batch_memory
from gkt.core.runtime import available_cpus, threads_beside
from gkt.data.decode import (
    BadImagePolicy,
    UnreadableImage,
    bad_image_policy,
    check_shared_memory,
    decode_image,
    note_skipped,
    unreadable_message,
)
from gkt.data.views import EpochCrops, RandomCrop, View, apply_views, canvas_shape, square_view


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

    def with_crops(self, recipe: RandomCrop, seed: int) -> ImageDataset:
        """The dataset with photo augmentation in its decode (see :mod:`gkt.data.views`): every image cropped
        at random per epoch, every view of the plan from the same box; :meth:`for_epoch` picks the epoch."""
        raise GktError(f"{self.name}: photo augmentation crops photos as they are decoded (folder: and hf: data); "
                       "for in-memory images use the batch augmentations (--augment flip crop erase)")

    def for_epoch(self, epoch: int) -> ImageDataset:
        """The dataset as training epoch ``epoch`` reads it (its own crops, where it has photo augmentation)."""
        return self

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

    def decode_fingerprint(self, base: str) -> str:
        """``base`` (a fingerprint) plus what of the decode shapes the images (encoded datasets: the decode plan
        and photo augmentation's crops); datasets of fixed images return it as it is."""
        return base


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
        self.crops: EpochCrops | None = None  # photo augmentation (with_crops), drawn per epoch and row

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
        image = decode_image(self.encoded(i), self.channels)
        box = self.crops.box(i, image.shape[-2], image.shape[-1]) if self.crops is not None else None
        return apply_views(image, self.views, box)

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

    def with_crops(self, recipe: RandomCrop, seed: int) -> EncodedImageDataset:
        cropped = copy.copy(self)
        cropped.crops, cropped._unreadable = EpochCrops(recipe, seed), dict(self._unreadable)
        return cropped

    def for_epoch(self, epoch: int) -> EncodedImageDataset:
        if self.crops is None or self.crops.epoch == epoch:
            return self
        at_epoch = copy.copy(self)
        at_epoch.crops = EpochCrops(self.crops.recipe, self.crops.seed, epoch)
        return at_epoch

    def fingerprint(self) -> str:
        return self.decode_fingerprint(super().fingerprint())

    def decode_fingerprint(self, base: str) -> str:
        """``base`` plus the crops (recipe, seed, epoch) of photo augmentation and the decode plan unless it is
        the plain square decode."""
        if self.crops is not None:
            base = stable_hash([base, repr(self.crops)])
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
