"""Per-model input preprocessing: every model normalises the same raw batch its own way."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

# Luminance weights (ITU-R BT.601) for turning RGB batches into one channel.
_RGB_TO_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Preprocess:
    """Input size (square), channel count and per-channel mean/std of a model."""

    input_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(int(d["input_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` images to float in [0, 1]; float images pass through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def adapt_layout(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert a float [0, 1] batch ``[B, C, H, W]`` to ``channels`` and a ``size``×``size`` resolution."""
    c = images.shape[1]
    if c != channels:
        if c == 1:
            images = images.expand(-1, channels, -1, -1)
        elif c == 3 and channels == 1:
            weights = images.new_tensor(_RGB_TO_GRAY).view(1, 3, 1, 1)
            images = (images * weights).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=images.shape[-1] > size)
    return images
