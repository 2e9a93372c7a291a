"""Vectorised batch augmentations on float images in [0, 1], ``[B, C, H, W]``.

Applied once per batch *before* per-model preprocessing, to each model's view of a decode plan with the same
draws (:func:`gkt.data.views.per_view`), so every model in a step sees the same augmentation. Per-sample
randomness comes from an explicit generator (reproducible). Photo augmentation (``photo``, a random-resized
crop drawn while decoding) lives in :mod:`gkt.data.views`; :func:`split_augment` separates the two kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from gkt.core.errors import GktError
from gkt.core.registry import Registry
from gkt.data.views import CROPS, RandomCrop

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")
register_augmentation = AUGMENTATIONS.register


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device)


@register_augmentation("flip")
def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (_uniform(len(x), generator, x.device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


@register_augmentation("crop")
def random_translate(x: torch.Tensor, generator: torch.Generator, pad: int = 3) -> torch.Tensor:
    """Random crop after zero-padding by ``pad`` pixels (a per-sample shift of up to ±pad)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    rows = (shifts[0, :, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(-1, x.shape[1], -1, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (shifts[1, :, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return out.gather(3, cols)


@register_augmentation("erase")
def random_erase(x: torch.Tensor, generator: torch.Generator, p: float = 0.5, max_frac: float = 0.4) -> torch.Tensor:
    """Zero a random rectangle (sides up to ``max_frac`` of the image) with probability ``p``."""
    b, _, h, w = x.shape
    r = torch.rand(5, b, generator=generator).to(x.device)
    eh, ew = (r[0] * max_frac * h).long() + 1, (r[1] * max_frac * w).long() + 1
    top, left = (r[2] * (h - eh + 1)).long(), (r[3] * (w - ew + 1)).long()
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_y = (ys[None] >= top[:, None]) & (ys[None] < (top + eh)[:, None])
    inside_x = (xs[None] >= left[:, None]) & (xs[None] < (left + ew)[:, None])
    mask = (inside_y[:, :, None] & inside_x[:, None, :]) & (r[4] < p)[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (torchvision's weights) of RGB images, ``[B, 1, H, W]``."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    return rgb_to_grayscale(x)


def _chosen(p: float, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (_uniform(n, generator, device) < p).view(-1, 1, 1, 1)


def colour_distortion(x: torch.Tensor, generator: torch.Generator, p: float = 0.8, strength: float = 1.0,
                      hue: bool = True) -> torch.Tensor:
    """SimCLR's colour distortion (Chen et al., 2020), applied to each image with probability ``p``:
    brightness, contrast and saturation factors uniform in ``[1 − 0.8s, 1 + 0.8s]`` and a hue shift uniform in
    ``±0.2s`` (``s`` = ``strength``), as torchvision's ``ColorJitter`` computes them, in one random order per
    batch. Saturation and hue need RGB images (skipped for others); ``hue=False`` leaves hue alone."""
    b, c = x.shape[:2]
    amount = torch.tensor([0.8, 0.8, 0.8, 0.2]) * strength
    drawn = (torch.rand(4, b, generator=generator) * 2 - 1) * amount[:, None]  # [4, B]: offsets from 1 (hue: shift)
    factors = drawn.to(x.device).view(4, b, 1, 1, 1)
    apply = _chosen(p, b, generator, x.device)
    out = x
    for op in torch.randperm(4, generator=generator).tolist():
        if op == 0:  # brightness
            step = out * (1 + factors[0])
        elif op == 1:  # contrast: blend with the image's mean grey level
            mean = (_grey(out) if c == 3 else out).mean((-3, -2, -1), keepdim=True)
            step = mean + (1 + factors[1]) * (out - mean)
        elif c != 3 or (op == 3 and not hue):
            continue
        elif op == 2:  # saturation: blend with the grey image
            grey = _grey(out)
            step = grey + (1 + factors[2]) * (out - grey)
        else:  # hue: torchvision's per-image HSV shift
            from torchvision.transforms.v2.functional import adjust_hue

            step = torch.stack([adjust_hue(img, shift) for img, shift in zip(out, drawn[3].tolist())])  # host floats
        out = torch.where(apply, step.clamp(0, 1), out)
    return out


def random_greyscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """Replace each RGB image by its grey image (three equal channels) with probability ``p``."""
    if x.shape[1] != 3:
        return x
    return torch.where(_chosen(p, len(x), generator, x.device), _grey(x).expand_as(x), x)


@register_augmentation("paper")
def paper_augmentation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The augmentation of Roth et al.'s code: flip (p = 0.5), colour distortion (p = 0.8, strength 1) and
    greyscale (p = 0.2)."""
    return random_greyscale(colour_distortion(random_hflip(x, generator), generator), generator)


@register_augmentation("jitter")
def timm_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """timm's default training colour jitter (``color_jitter=0.4``): brightness, contrast and saturation factors
    uniform in [0.6, 1.4] for every image, in random order, hue unchanged. With ``photo`` (and ``flip`` drawn
    there) it completes timm's default training transform."""
    return colour_distortion(x, generator, p=1.0, strength=0.5, hue=False)


def compose(names: Sequence[str]) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    AUGMENTATIONS.check(list(names))

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for name in names:
            x = AUGMENTATIONS[name](x, generator)
        return x

    return apply


def split_augment(names: Sequence[str]) -> tuple[RandomCrop | None, tuple[str, ...]]:
    """``--augment`` names as (the photo augmentation done while decoding, if any; the batch augmentations
    applied after it, in order). Unknown names fail here, listing both kinds."""
    crops = [n for n in names if n in CROPS]
    unknown = [n for n in names if n not in CROPS and n not in AUGMENTATIONS]
    if unknown:
        raise GktError(f"unknown augmentation(s) {', '.join(map(repr, unknown))}; choose from "
                       f"{', '.join([*CROPS.names(), *AUGMENTATIONS.names()])}")
    if len(crops) > 1:
        raise GktError(f"--augment names {len(crops)} photo augmentations ({', '.join(crops)}); give at most one")
    return (CROPS[crops[0]] if crops else None), tuple(n for n in names if n not in CROPS)


AUGMENT_HELP = ("augmentations, seen by every model in its own view: 'photo' (folder:/hf: data: a random-resized "
                "crop and flip drawn while decoding, the same box for every model at its own size and interpolation; "
                "the frozen models' outputs are stored per epoch and reused) and batch ones applied after it")


def augment_help() -> str:
    """The ``--augment`` help text of every verb, naming every augmentation."""
    return f"{AUGMENT_HELP}: {', '.join(AUGMENTATIONS.names())}"
