"""Per-model input preprocessing: every model normalises the same raw batch its own way."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# Luminance weights (ITU-R BT.601) for turning RGB batches into one channel.
_RGB_TO_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Preprocess:
    """A model's eval transform: input size (square), channel count, per-channel mean/std, and the
    centre-crop fraction and interpolation of its resize (timm ``crop_pct``: resize to
    ``input_size / crop_pct``, then crop the centre ``input_size``; 1.0 resizes straight to the input)."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"std must be positive and mean/std finite, got mean {self.mean} / std {self.std} "
                             "(a zero std divides by zero)")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def to_dict(self) -> dict:
        """Fields with their default values are left out, so identities made before they existed still hold."""
        d = asdict(self)
        for name, default in (("crop_pct", 1.0), ("interpolation", "bilinear")):
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(int(d["input_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]),
                   float(d.get("crop_pct", 1.0)), str(d.get("interpolation", "bilinear")))


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images to float in [0, 1]; float images pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def decode_size_for(preprocesses: Iterable[Preprocess]) -> int:
    """The decode size of a pass over encoded images: the largest ``ceil(input_size / crop_pct)`` of its
    models. Each image is decoded to that square once; every model then resizes and crops it to its own
    input (:func:`adapt_layout`)."""
    return max(math.ceil(p.input_size / p.crop_pct) for p in preprocesses)


def adapt_layout(images: torch.Tensor, channels: int, size: int, crop_pct: float = 1.0,
                 interpolation: str = "bilinear") -> torch.Tensor:
    """Convert a batch ``[B, C, H, W]`` (float in [0, 1], or ``uint8``) to ``channels`` and a
    ``size``×``size`` resolution: resize to ``size / crop_pct`` (shorter side) and crop the centre
    ``size``×``size``. ``uint8`` stays ``uint8`` when only cropping and channel copying are needed (the
    float conversion then happens once, on the cropped batch); otherwise the result is float in [0, 1]."""
    c = images.shape[1]
    if c != channels:
        if c == 1:
            images = images.expand(-1, channels, -1, -1)
        elif c == 3 and channels == 1:
            weights = torch.tensor(_RGB_TO_GRAY, device=images.device).view(1, 3, 1, 1)
            images = (to_unit_float(images) * weights).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    height, width = images.shape[-2:]
    scale = math.floor(size / crop_pct) if crop_pct < 1 else size
    target = (scale, scale) if height == width else \
        ((scale, round(width * scale / height)) if height < width else (round(height * scale / width), scale))
    if (height, width) != target:
        smooth = interpolation != "nearest"
        images = F.interpolate(to_unit_float(images), size=target, mode=interpolation,
                               antialias=smooth and min(height, width) > scale,
                               **({"align_corners": False} if smooth else {}))
        if interpolation == "bicubic":
            images = images.clamp_(0, 1)
    top, left = (target[0] - size) // 2, (target[1] - size) // 2
    return images[..., top:top + size, left:left + size]


def prepare(images: torch.Tensor, preprocess: Preprocess, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A raw batch (``uint8``, or float in [0, 1]) as the model's normalised input ``(x - mean) / std``:
    :func:`adapt_layout` to its channels and size (``uint8`` is converted after cropping, so only the
    pixels the model sees), then one multiply-add. ``mean``/``std`` are ``[1, C, 1, 1]``; a ``uint8``
    batch and the same batch as float ``x / 255`` give identical results."""
    p = preprocess
    x = to_unit_float(adapt_layout(images, p.channels, p.input_size, p.crop_pct, p.interpolation)).to(mean.dtype)
    inv_std = std.reciprocal()
    return torch.addcmul(-mean * inv_std, x, inv_std)
