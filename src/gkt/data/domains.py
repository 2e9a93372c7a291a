"""Domains: registered pure pixel transforms of a data set (``BASE@DOMAIN``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gkt.core.errors import GktError
from gkt.core.registry import Registry
from gkt.data.datasets import ImageDataset, TensorImageDataset
from gkt.data.views import RandomCrop, View

Transform = Callable[[torch.Tensor], torch.Tensor]


CHUNK = 4096  # images per transform call (bounds the int64 intermediates)


@dataclass(frozen=True)
class Domain:
    name: str
    transform: Transform
    description: str


DOMAINS: Registry[Domain] = Registry("domain")


def register_domain(name: str, description: str) -> Callable[[Transform], Transform]:
    """Register ``transform`` (uint8 batch -> uint8 batch of the same shape, deterministic) as ``name``."""

    def decorate(transform: Transform) -> Transform:
        DOMAINS[name] = Domain(name, transform, description)
        return transform

    return decorate


def separable_filter(x: torch.Tensor, rows: Sequence[int], cols: Sequence[int]) -> torch.Tensor:
    """Integer 2-D correlation of ``x`` (int64 ``[N, C, H, W]``) with ``outer(rows, cols)``, zero padding,
    as sums of shifted copies (exact, order-independent)."""
    h, w = x.shape[-2:]
    r = len(rows) // 2
    padded = F.pad(x, (0, 0, r, r))
    x = sum(k * padded[..., i:i + h, :] for i, k in enumerate(rows) if k)
    c = len(cols) // 2
    padded = F.pad(x, (c, c, 0, 0))
    return sum(k * padded[..., j:j + w] for j, k in enumerate(cols) if k)


def _per_image_rescale(values: torch.Tensor) -> torch.Tensor:
    """Non-negative float64 maps scaled so each image's maximum is 255 (all-zero images stay 0)."""
    peak = values.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return (values * (255.0 / peak)).round().clamp(0, 255).to(torch.uint8)


@register_domain("edges", "Sobel gradient magnitude, each image rescaled to a maximum of 255 (edge maps)")
def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    x = images.long()
    gx = separable_filter(x, (1, 2, 1), (-1, 0, 1))
    gy = separable_filter(x, (-1, 0, 1), (1, 2, 1))
    return _per_image_rescale((gx * gx + gy * gy).double().sqrt())


@register_domain("invert", "inverted contrast: 255 - x")
def invert(images: torch.Tensor) -> torch.Tensor:
    return 255 - images


BINOMIAL_9 = (1, 8, 28, 56, 70, 56, 28, 8, 1)  # sums to 256; a Gaussian of sigma 2 px


@register_domain("blur", "heavy blur: 9x9 binomial filter (Gaussian, sigma 2 px), zero padding, exact integer rounding")
def blur(images: torch.Tensor) -> torch.Tensor:
    total = sum(BINOMIAL_9) ** 2
    blurred = separable_filter(images.long(), BINOMIAL_9, BINOMIAL_9)
    return torch.div(blurred + total // 2, total, rounding_mode="floor").to(torch.uint8)


def transform_images(images: torch.Tensor, domain: str) -> torch.Tensor:
    """``images`` (uint8 ``[N, C, H, W]``) in ``domain``, in chunks of :data:`CHUNK` images."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise GktError(f"domain transforms take uint8 [N, C, H, W] images, got {images.dtype} {tuple(images.shape)}")
    fn = DOMAINS[domain].transform
    return torch.cat([fn(chunk) for chunk in images.split(CHUNK)]) if len(images) else images.clone()


class DomainImageDataset(ImageDataset):
    """A lazily transformed view of a dataset whose images are decoded on demand (image folders)."""

    def __init__(self, base: ImageDataset, domain: str):
        super().__init__(f"{base.name}@{domain}", base.labels, base.class_names, base.image_shape)
        self.base, self.domain = base, domain

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        """The domain applied to each view of a canvas separately (a filter must not reach across views)."""
        views = self.base.decode_plan
        if len(views) < 2:
            return transform_images(images, self.domain)
        out, channels = torch.zeros_like(images), images.shape[1] // len(views)
        for k, view in enumerate(views):
            area = (slice(None), slice(k * channels, (k + 1) * channels), slice(0, view.crop), slice(0, view.crop))
            out[area] = transform_images(images[area].contiguous(), self.domain)
        return out

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return self._transform(self.base.load(indices))

    def load_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        images, bad = self.base.load_batch(indices)
        return self._transform(images), bad

    def subset(self, indices: torch.Tensor, tag: str) -> DomainImageDataset:
        return DomainImageDataset(self.base.subset(indices, tag), self.domain)

    def at_decode_size(self, size: int) -> ImageDataset:
        resized = self.base.at_decode_size(size)
        return self if resized is self.base else DomainImageDataset(resized, self.domain)

    def at_decode_plan(self, views: tuple[View, ...]) -> ImageDataset:
        planned = self.base.at_decode_plan(views)
        return self if planned is self.base else DomainImageDataset(planned, self.domain)

    @property
    def decode_plan(self) -> tuple[View, ...]:
        return self.base.decode_plan

    def with_crops(self, recipe: RandomCrop, seed: int) -> ImageDataset:
        """The base's photo augmentation, then the domain on each cropped view."""
        return DomainImageDataset(self.base.with_crops(recipe, seed), self.domain)

    def for_epoch(self, epoch: int) -> ImageDataset:
        at_epoch = self.base.for_epoch(epoch)
        return self if at_epoch is self.base else DomainImageDataset(at_epoch, self.domain)

    def fingerprint(self) -> str:
        """As :meth:`ImageDataset.fingerprint` (its ``@domain`` name), plus the base's decode (plan and crops)."""
        return self.base.decode_fingerprint(super().fingerprint())

    def content_id(self) -> str | None:
        return self.base.content_id()

    def unreadable_rows(self) -> dict[int, str]:
        return self.base.unreadable_rows()

    def mark_unreadable(self, row: int, reason: str) -> None:
        self.base.mark_unreadable(row, reason)

    def drop_unreadable(self) -> None:
        self.base.drop_unreadable()
        self.labels = self.base.labels


def apply_domain(dataset: ImageDataset, domain: str) -> ImageDataset:
    """``dataset`` in ``domain``: same samples, labels and classes; in-memory datasets are transformed
    once, others lazily per batch. The name (hence every cache key) gains ``@domain``."""
    DOMAINS.check(domain)
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(f"{dataset.name}@{domain}", transform_images(dataset.images, domain),
                                  dataset.labels, dataset.class_names)
    return DomainImageDataset(dataset, domain)


def describe_domains() -> str:
    return "\n".join(f"  {d.name:8s} {d.description}" for d in DOMAINS.values())


__all__ = ["DOMAINS", "Domain", "apply_domain", "describe_domains", "register_domain", "transform_images"]
