"""Shifted domains (paper appendix B.5): deterministic, class-preserving style transforms of a dataset,
and teachers fine-tuned on such a domain.

A domain is a registered function ``uint8 [N, C, H, W] -> uint8 [N, C, H, W]`` that changes the images'
style but keeps what they show (so the labels stay valid). Every transform uses integer arithmetic (or
correctly rounded float64 element-wise operations), never convolutions whose summation order depends
on the thread count: the same input gives the same bytes on any machine. A data spec ``BASE@DOMAIN``
(e.g. ``fmnist@edges``, see :mod:`gkt.data`) loads BASE's split with the transform applied, sample for
sample, so the shifted train/test splits hold the same images as the original ones.

:func:`domain_teacher` fine-tunes a model (all weights, starting from its own) on a shifted domain and
caches the result as a ``file:`` checkpoint keyed by the model's weights, the data and the recipe.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from gkt.data import DataSpec, ImageDataset, TensorImageDataset, load_split, stratified_subset
from gkt.models import DataInfo, load_checkpoint, load_model, save_checkpoint, weights_hash
from gkt.training import Recipe, evaluate, train_supervised
from gkt.utils import GktError, cache_home, stable_hash

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]
CHUNK = 4096  # images per transform call (bounds the int64 intermediates)


@dataclass(frozen=True)
class Domain:
    name: str
    transform: Transform
    description: str


DOMAINS: dict[str, Domain] = {}


def register_domain(name: str, description: str) -> Callable[[Transform], Transform]:
    """Register ``transform`` (uint8 batch -> uint8 batch of the same shape, deterministic) as ``name``."""

    def decorate(transform: Transform) -> Transform:
        DOMAINS[name] = Domain(name, transform, description)
        return transform

    return decorate


def get_domain(name: str) -> Domain:
    if name not in DOMAINS:
        raise GktError(f"unknown domain {name!r}; known: {', '.join(sorted(DOMAINS))}")
    return DOMAINS[name]


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
    fn = get_domain(domain).transform
    return torch.cat([fn(chunk) for chunk in images.split(CHUNK)]) if len(images) else images.clone()


class DomainImageDataset(ImageDataset):
    """A lazily transformed view of a dataset whose images are decoded on demand (image folders)."""

    def __init__(self, base: ImageDataset, domain: str):
        super().__init__(f"{base.name}@{domain}", base.labels, base.class_names, base.image_shape)
        self.base, self.domain = base, domain

    def load(self, indices: torch.Tensor) -> torch.Tensor:
        return transform_images(self.base.load(indices), self.domain)

    def subset(self, indices: torch.Tensor, tag: str) -> DomainImageDataset:
        return DomainImageDataset(self.base.subset(indices, tag), self.domain)


def apply_domain(dataset: ImageDataset, domain: str) -> ImageDataset:
    """``dataset`` in ``domain``: same samples, labels and classes; in-memory datasets are transformed
    once, others lazily per batch. The name (hence every cache key) gains ``@domain``."""
    get_domain(domain)
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(f"{dataset.name}@{domain}", transform_images(dataset.images, domain),
                                  dataset.labels, dataset.class_names)
    return DomainImageDataset(dataset, domain)


# ----------------------------------------------------------------------------- domain teachers


@dataclass(frozen=True)
class DomainFinetune:
    """Full fine-tuning of a pretrained model on a shifted domain (from its own weights, new optimiser
    state, warm-up + cosine), on a stratified ``fraction`` of the domain's train split."""

    recipe: Recipe = field(default_factory=lambda: Recipe(epochs=3, optimizer="adamw", lr=1e-3, weight_decay=0.01,
                                                          batch_size=128, warmup_epochs=0.2))
    fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "fraction": self.fraction}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:]


def domain_teacher(spec: str, data: str, cfg: DomainFinetune, device: torch.device, data_dir: str | None = None,
                   zoo_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    """Fine-tune model ``spec`` on the shifted data spec ``data`` (``BASE@DOMAIN``); returns the cached
    ``file:`` spec and its record: test accuracy on the original and the shifted domain, before and
    after fine-tuning. Cached in ``$GKT_HOME/domains`` by weights, data and recipe."""
    parsed = DataSpec.parse(data)
    if parsed.domain is None:
        raise GktError(f"{data!r} is not a shifted domain; use BASE@DOMAIN, e.g. fmnist@edges")
    base_spec = replace(parsed, domain=None)
    test_orig = load_split(base_spec, "test", data_dir=data_dir)
    test_shift = apply_domain(test_orig, parsed.domain)
    model = load_model(spec, DataInfo.from_dataset(test_orig), zoo_dir)
    train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
    train = stratified_subset(train, fraction=cfg.fraction, seed=cfg.recipe.seed)
    key = stable_hash([weights_hash(model), model.arch.to_dict(), model.preprocess.to_dict(), train.fingerprint(),
                       len(train), test_orig.fingerprint(), cfg.to_dict()])
    path = cache_home() / "domains" / f"{_slug(spec)}-{parsed.domain}-{key}"
    if path.with_suffix(".json").is_file():
        record = dict(load_checkpoint(path).provenance["domain_finetune"])
        return f"file:{path}", {**record, "cached": True}
    record = {"source": spec, "domain": parsed.domain, "data": data, "train": train.name, "samples": len(train),
              **cfg.to_dict(), "acc_orig_before": evaluate(model, test_orig, device),
              "acc_domain_before": evaluate(model, test_shift, device)}
    start = time.perf_counter()
    model.requires_grad_(True)
    train_supervised(model, train, cfg.recipe, device, desc=f"{spec} on {parsed.domain}")
    record |= {"train_seconds": round(time.perf_counter() - start, 1),
               "acc_orig_after": evaluate(model, test_orig, device),
               "acc_domain_after": evaluate(model, test_shift, device)}
    model = model.cpu().eval()
    model.provenance = {**{k: v for k, v in model.provenance.items() if k == "family"},
                        "domain_finetune": record, "source_provenance": model.provenance}
    save_checkpoint(model, path)
    log.info("%s on %s: original %.2f%% -> %.2f%%, shifted %.2f%% -> %.2f%%", spec, parsed.domain,
             100 * record["acc_orig_before"], 100 * record["acc_orig_after"], 100 * record["acc_domain_before"],
             100 * record["acc_domain_after"])
    return f"file:{path}", {**record, "cached": False}


def describe_domains() -> str:
    return "\n".join(f"  {d.name:8s} {d.description}" for d in DOMAINS.values())


__all__ = ["DOMAINS", "Domain", "DomainFinetune", "apply_domain", "describe_domains", "domain_teacher",
           "get_domain", "register_domain", "transform_images"]
