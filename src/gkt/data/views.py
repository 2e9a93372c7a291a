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

*Photo augmentation* happens in the same decode: a :class:`RandomCrop` draws one box (and flip) per image and
epoch, in the original image's pixels, from a seed fixed by the run's seed, the epoch and the row
(:class:`EpochCrops`), so the draw does not depend on batch order, worker or process; every view of the plan
then resizes *that* box to its own crop size with its own interpolation (torchvision's ``resized_crop``, as
``RandomResizedCrop`` does for each library's training transform). Every model sees the same crop, each in
its own preprocessing, and a frozen model's outputs for an epoch can be stored and reused by content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gkt.core.registry import Registry

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


@dataclass(frozen=True)
class CropBox:
    """A crop of one image in its original pixels (``top``, ``left``, ``height``, ``width``), and a mirror flag."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False

    def apply(self, images: torch.Tensor, view: View) -> torch.Tensor:
        """The box resized to ``view.crop`` px square with the view's interpolation (antialiased), then mirrored
        when ``flip``: ``RandomResizedCrop`` + ``RandomHorizontalFlip`` of the libraries, with this box."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        mode = InterpolationMode.NEAREST_EXACT if view.interpolation == "nearest" \
            else InterpolationMode(view.interpolation)
        out = TF.resized_crop(images, self.top, self.left, self.height, self.width, [view.crop, view.crop],
                              interpolation=mode, antialias=True)
        if view.interpolation == "bicubic" and out.is_floating_point():
            out = out.clamp_(0, 1)
        return out.flip(-1) if self.flip else out


@dataclass(frozen=True)
class RandomCrop:
    """Random-resized crop and horizontal flip as torchvision's and timm's training transforms draw them: an
    area share in ``scale`` and a log-uniform aspect ratio in ``ratio`` (10 tries, then the centre crop of the
    widest allowed shape: ``RandomResizedCrop.get_params``), mirrored with probability ``flip``."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def draw(self, height: int, width: int, seed: int) -> CropBox:
        """The box of one image of ``height``×``width`` px, fixed by ``seed`` (torch's global RNG untouched)."""
        from torchvision.transforms import RandomResizedCrop

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            top, left, h, w = RandomResizedCrop.get_params(torch.empty(1, height, width, dtype=torch.uint8),
                                                           list(self.scale), list(self.ratio))
            flip = bool(torch.rand(1).item() < self.flip)
        return CropBox(top, left, h, w, flip)


# Decode-time augmentations by name (``--augment photo``); batch-level ones live in :mod:`gkt.data.augment`.
CROPS: Registry[RandomCrop] = Registry("photo augmentation")
CROPS.register("photo")(RandomCrop())


@dataclass(frozen=True)
class EpochCrops:
    """The crops of one training epoch: ``recipe`` drawn per image from ``(seed, epoch, row)``."""

    recipe: RandomCrop
    seed: int
    epoch: int = 0

    def box(self, row: int, height: int, width: int) -> CropBox:
        # A fixed integer mix of the three (Python's hash() of tuples differs between processes).
        mixed = (self.seed * 1_000_003 + self.epoch) * 2_654_435_761 + row
        return self.recipe.draw(height, width, mixed % (1 << 63))


def apply_views(image: torch.Tensor, views: Sequence[View], box: CropBox | None = None) -> torch.Tensor:
    """One decoded image ``[C, H, W]`` as the canvas of ``views`` (see the module docstring): each view's
    resize and centre crop, or with ``box`` that crop resized to each view's crop size."""
    def one(view: View) -> torch.Tensor:
        return view.apply(image) if box is None else box.apply(image, view)

    if len(views) == 1:
        return one(views[0]).contiguous()
    channels = image.shape[0]
    canvas = torch.zeros(canvas_shape(views, channels), dtype=image.dtype)
    for k, view in enumerate(views):
        canvas[k * channels:(k + 1) * channels, :view.crop, :view.crop] = one(view)
    return canvas


def per_view(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, views: Sequence[View],
             generator: torch.Generator) -> torch.Tensor:
    """``fn`` (a batch augmentation drawing from ``generator``) applied to each view of a batch of canvases
    with the same draws: the generator is rewound before each view, so every model sees the same flip, shift
    (in its own pixels) and colour change. Plain batches (at most one view) go to ``fn`` as they are."""
    if len(views) <= 1:
        return fn(batch)
    state = generator.get_state()
    out = batch.clone()
    channels = batch.shape[1] // len(views)
    for k, view in enumerate(views):
        generator.set_state(state)
        out[:, k * channels:(k + 1) * channels, :view.crop, :view.crop] = fn(view_of(batch, views, view))
    return out


def view_of(batch: torch.Tensor, views: Sequence[View], view: View) -> torch.Tensor | None:
    """``view`` sliced out of a batch of canvases of ``views`` ``[B, V * C, S, S]``; None when the plan
    lacks it."""
    if view not in views:
        return None
    channels = batch.shape[1] // len(views)
    k = list(views).index(view)
    return batch[:, k * channels:(k + 1) * channels, :view.crop, :view.crop]
