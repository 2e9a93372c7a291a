"""Eval views: the resize-then-centre-crop geometry of a model's eval transform, computed as the libraries
compute it, and decode plans that give every model of a pass its own view of one decode.

A :class:`View` reproduces the arithmetic of torchvision's ``Resize(int)`` + ``CenterCrop`` (timm's
``transforms_imagenet_eval``, torchvision's ``ImageClassification`` preset) and of the transformers image
processors: the shorter side resized to ``resize`` and the longer to ``int(resize * long / short)`` (or both
sides to ``resize``: *squash*), antialiased resampling with the model's interpolation, then the centre
``crop``×``crop`` at offset ``round((H - crop) / 2)`` (torchvision) or ``floor`` (transformers). Resizing
``uint8`` images with torchvision's antialiased kernels gives PIL's results to within rounding.

A *decode plan* is a tuple of distinct views. An encoded image is decoded once and every view of the plan is
taken from the decoded original; the views are stacked along the channel axis of one ``uint8`` canvas
``[V * C, S, S]`` (``S`` the largest crop; smaller views sit top-left), and :func:`view_of` slices a model's
view back out of a batch of canvases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_ROUNDINGS = ("round", "floor")


@dataclass(frozen=True)
class View:
    """Resize (shorter side to ``resize``, or ``squash`` both sides to it) with ``interpolation``, then
    crop the centre ``crop``×``crop`` (offsets rounded as ``crop_rounding`` says)."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    squash: bool = False
    crop_rounding: str = "round"

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"a view crops {self.crop} px from a {self.resize} px resize: need 0 < crop <= resize")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(f"crop_rounding must be one of {', '.join(CROP_ROUNDINGS)}, got {self.crop_rounding!r}")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """The size an ``height``×``width`` image is resized to (torchvision's ``Resize(int)`` rule)."""
        if self.squash:
            return self.resize, self.resize
        if height <= width:
            return self.resize, int(self.resize * width / height)
        return int(self.resize * height / width), self.resize

    def crop_offset(self, extent: int) -> int:
        half = (extent - self.crop) / 2.0
        return int(round(half)) if self.crop_rounding == "round" else int(half)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``images [..., C, H, W]`` (``uint8``, or float in [0, 1]) as this view ``[..., C, crop, crop]``, same
        dtype (bicubic float results are clamped to [0, 1], as ``uint8`` ones saturate)."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        height, width = images.shape[-2:]
        target = self.resized_shape(height, width)
        if (height, width) != target:
            # NEAREST_EXACT is PIL's nearest neighbour (torch's "nearest" picks shifted pixels).
            mode = InterpolationMode.NEAREST_EXACT if self.interpolation == "nearest" \
                else InterpolationMode(self.interpolation)
            images = TF.resize(images, list(target), interpolation=mode, antialias=True)
            if self.interpolation == "bicubic" and images.is_floating_point():
                images = images.clamp_(0, 1)
        top, left = self.crop_offset(target[0]), self.crop_offset(target[1])
        return images[..., top:top + self.crop, left:left + self.crop]


def square_view(size: int) -> View:
    """The generic decode of a data set not planned for particular models: shorter side to ``size``
    (antialiased bilinear), centre square."""
    return View(size, size, "bilinear", crop_rounding="floor")


def canvas_shape(views: Sequence[View], channels: int) -> tuple[int, int, int]:
    side = max(v.crop for v in views)
    return channels * len(views), side, side


def apply_views(image: torch.Tensor, views: Sequence[View]) -> torch.Tensor:
    """One decoded image ``[C, H, W]`` as the canvas of ``views`` (see the module docstring)."""
    if len(views) == 1:
        return views[0].apply(image).contiguous()
    channels = image.shape[0]
    canvas = torch.zeros(canvas_shape(views, channels), dtype=image.dtype)
    for k, view in enumerate(views):
        canvas[k * channels:(k + 1) * channels, :view.crop, :view.crop] = view.apply(image)
    return canvas


def view_of(batch: torch.Tensor, views: Sequence[View], view: View) -> torch.Tensor | None:
    """``view`` sliced out of a batch of canvases of ``views`` ``[B, V * C, S, S]``; None when the plan
    lacks it."""
    if view not in views:
        return None
    channels = batch.shape[1] // len(views)
    k = list(views).index(view)
    return batch[:, k * channels:(k + 1) * channels, :view.crop, :view.crop]
