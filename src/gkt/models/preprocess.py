"""Per-model input preprocessing: every model normalises the same raw batch its own way."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from gkt.core.limits import check_batch_memory
from gkt.data.views import View

# Luminance weights (ITU-R BT.601) for turning RGB batches into one channel.
_RGB_TO_GRAY = (0.299, 0.587, 0.114)
# Fields left out of an identity at their defaults, so identities made before they existed still hold.
_DEFAULTS = {"crop_pct": 1.0, "interpolation": "bilinear", "squash": False, "crop_rounding": "round"}


@dataclass(frozen=True)
class Preprocess:
    """A model's eval transform, as its library computes it: resize to ``floor(input_size / crop_pct)``
    (the shorter side, the longer keeping the aspect ratio; ``squash``: both sides) with ``interpolation``
    (antialiased), crop the centre ``input_size``×``input_size`` (offsets rounded as ``crop_rounding``:
    ``round`` for timm and torchvision, ``floor`` for transformers), then ``(x - mean) / std`` per channel
    (see :class:`gkt.data.views.View`)."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    squash: bool = False
    crop_rounding: str = "round"

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"std must be positive and mean/std finite, got mean {self.mean} / std {self.std} "
                             "(a zero std divides by zero)")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        self.view  # noqa: B018 — validates interpolation and crop_rounding

    @property
    def view(self) -> View:
        """The resize-and-crop geometry of this transform."""
        return View(math.floor(self.input_size / self.crop_pct), self.input_size, self.interpolation, self.squash,
                    self.crop_rounding)

    def to_dict(self) -> dict:
        """Fields at their default values are left out, so identities made before they existed still hold."""
        return {k: v for k, v in asdict(self).items() if k not in _DEFAULTS or v != _DEFAULTS[k]}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(int(d["input_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]),
                   float(d.get("crop_pct", 1.0)), str(d.get("interpolation", "bilinear")),
                   bool(d.get("squash", False)), str(d.get("crop_rounding", "round")))


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images to float in [0, 1]; float images pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def decode_plan_for(preprocesses: Iterable[Preprocess]) -> tuple[View, ...]:
    """The decode plan of a pass over encoded images: each model's own view (distinct ones once). Each
    image is decoded once and every view is taken from the full-size decode, so each model sees exactly
    what its library's transform gives (:meth:`gkt.data.datasets.ImageDataset.at_decode_plan`)."""
    return tuple(dict.fromkeys(p.view for p in preprocesses))


def decode_size_for(preprocesses: Iterable[Preprocess]) -> int:
    """The decode size of a pass that shares one plain square decode among its models (KDEP's image folders):
    the largest resize size of its models; each model then resizes and crops that square to its own input
    (:func:`adapt_layout`), close to but not exactly its library's transform (the views of
    :func:`decode_plan_for`, which analysis and transfer use, are exact)."""
    return max(p.view.resize for p in preprocesses)


def adapt_layout(images: torch.Tensor, channels: int, view: View | None = None) -> torch.Tensor:
    """Convert a batch ``[B, C, H, W]`` (float in [0, 1], or ``uint8``) to ``channels`` and, when ``view``
    is given, resize and centre-crop it as ``view`` says (its dtype kept; RGB to grey gives float)."""
    c = images.shape[1]
    if c != channels:
        if c == 1:
            images = images.expand(-1, channels, -1, -1)
        elif c == 3 and channels == 1:
            weights = torch.tensor(_RGB_TO_GRAY, device=images.device).view(1, 3, 1, 1)
            images = (to_unit_float(images) * weights).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    return images if view is None else view.apply(images)


def prepare(images: torch.Tensor, preprocess: Preprocess, mean: torch.Tensor, std: torch.Tensor,
            at_input: bool = False) -> torch.Tensor:
    """A raw batch (``uint8``, or float in [0, 1]) as the model's normalised input ``(x - mean) / std``:
    :func:`adapt_layout` to its channels and view (``at_input``: the batch is already the model's view,
    e.g. sliced from a decode plan's canvas; only channels and normalisation remain), then one multiply-add.
    ``mean``/``std`` are ``[1, C, 1, 1]``. Otherwise the batch is resized as float, so that a ``uint8`` batch
    and the same batch as float ``x / 255`` give identical inputs: what a model sees in evaluation (raw
    ``uint8`` tensors) is what it saw in training (float batches after augmentation)."""
    p = preprocess
    check_batch_memory(images.shape[0], (p.channels, p.view.resize, p.view.resize), images.device)
    if at_input:
        x = to_unit_float(adapt_layout(images, p.channels)).to(mean.dtype)
    else:
        x = adapt_layout(to_unit_float(images), p.channels, p.view).to(mean.dtype)
    if at_input and x.shape[-2:] != (p.input_size, p.input_size):
        raise ValueError(f"a model view must be {p.input_size}x{p.input_size}, got {tuple(x.shape[-2:])}")
    inv_std = std.reciprocal()
    return torch.addcmul(-mean * inv_std, x, inv_std)
