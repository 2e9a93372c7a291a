"""The eval transform of a ``transformers`` image processor as gkt's :class:`~gkt.models.preprocess.Preprocess`.

gkt gives every model its own view of each decoded image (resize, centre crop, ``(x - mean) / std``), so
it reads the geometry and the normalisation off the image processor instead of calling it per image.
Only the processor families whose transform gkt reproduces are accepted (:data:`PROCESSORS`;
``tests/models/test_hf_views.py`` checks each against the processor itself, within 10⁻⁴ grey levels);
any other processor, or one with a step gkt does not reproduce (a channel flip, colour quantisation,
padding), is refused with the reason.
"""

from __future__ import annotations

import math
from typing import Any

from gkt.core.errors import GktError
from gkt.models.specs import ModelSpec

# PIL resampling codes of image processors, as gkt's interpolation names.
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# Image processors (class names without the Pil/Fast backend suffix) whose eval transform gkt reproduces,
# with the model families that use them on the hub.
PROCESSORS = {
    "ViTImageProcessor": "ViT, Swin, Swin v2, DiNAT, ViT-MSN, I-JEPA",
    "DeiTImageProcessor": "DeiT",
    "BeitImageProcessor": "BEiT, Data2Vec-vision",
    "ConvNextImageProcessor": "ConvNeXt, ConvNeXt v2, ResNet, RegNet, CvT, VAN",
    "EfficientNetImageProcessor": "EfficientNet",
    "MobileNetV1ImageProcessor": "MobileNet v1",
    "MobileNetV2ImageProcessor": "MobileNet v2",
    "BitImageProcessor": "DINOv2, BiT, FocalNet, Hiera, ViT-hybrid",
    "LevitImageProcessor": "LeViT",
    "PvtImageProcessor": "PVT",
    "SegformerImageProcessor": "SegFormer (MiT)",
    "SiglipImageProcessor": "SigLIP",
    "CLIPImageProcessor": "CLIP",
    "PoolFormerImageProcessor": "PoolFormer",
}
# Steps of a processor that do not change an eval image of a classifier (or that gkt does as well: RGB).
NEUTRAL_STEPS = frozenset({"do_resize", "do_rescale", "do_normalize", "do_center_crop", "do_convert_rgb",
                           "do_reduce_labels"})


def crop_fraction(crop: int, resize: int) -> float:
    """``crop / resize`` as the float ``p`` closest to it with ``floor(crop / p) == resize`` (the resize size
    :func:`gkt.models.preprocess.adapt_layout` computes back from it, despite rounding)."""
    p = crop / resize
    while crop / p < resize:
        p = math.nextafter(p, 0.0)
    return p


def _size(size: Any) -> tuple[int | None, int | None, int | None]:
    """``(height, width, shortest_edge)`` of a processor's size (a dict or a SizeDict)."""
    if size is None:
        return None, None, None
    if isinstance(size, int):
        return size, size, None
    get = size.get if hasattr(size, "get") else lambda key: getattr(size, key, None)
    return get("height"), get("width"), get("shortest_edge")


def _interpolation(resample: Any) -> str:
    if resample is None:
        return "bilinear"
    value = getattr(resample, "value", resample)
    if isinstance(value, str):
        return value.lower()
    return PIL_RESAMPLE.get(int(value), "bicubic")


def processor_family(processor: Any) -> str:
    """The processor's class name without its backend suffix (``ViTImageProcessorPil`` → ``ViTImageProcessor``)."""
    name = type(processor).__name__
    for suffix in ("Pil", "Fast"):
        name = name.removesuffix(suffix)
    return name


def check_processor(processor: Any, what: str) -> None:
    """Refuse an image processor whose eval transform gkt does not reproduce exactly."""
    family = processor_family(processor)
    if family not in PROCESSORS:
        raise GktError(f"{what}: its image processor {type(processor).__name__} is not one whose transform gkt "
                       f"reproduces ({', '.join(sorted(PROCESSORS))}); save the model with one of those "
                       "(e.g. a ViTImageProcessor with its size, mean and std) or load it another way")
    steps = sorted(k for k, v in vars(processor).items() if k.startswith("do_") and v and k not in NEUTRAL_STEPS)
    if steps:
        raise GktError(f"{what}: its image processor {type(processor).__name__} turns on {', '.join(steps)}, "
                       "a step gkt's views do not reproduce; turn it off in preprocessor_config.json if the "
                       "model does not need it")


def _geometry(processor: Any, family: str) -> tuple[int | None, int | None, float, bool]:
    """``(height, width, crop_pct, squash)`` of the processor's resize and centre crop."""
    height, width, shortest = _size(processor.size)
    if shortest is not None and family == "LevitImageProcessor":  # LeViT: the shorter side to 256/224 of it
        shortest = int((256 / 224) * shortest)
    crop_pct, squash = 1.0, shortest is None
    processor_crop = getattr(processor, "crop_pct", None)  # ConvNeXt, PoolFormer: resize to size / crop_pct
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None:
        crop_h, crop_w, _ = _size(processor.crop_size)
        resized = shortest or (height if height == width else None)
        if processor_crop is not None and resized:  # PoolFormer: the shorter side to size / crop_pct
            resized, squash = int(resized / processor_crop), False
        if crop_h is not None and resized:
            height, width, crop_pct = crop_h, crop_w, crop_fraction(crop_h, resized)
    elif shortest is not None:
        height = width = shortest
        if processor_crop is not None:  # ConvNeXt: below 384 px the shorter side to shortest / crop_pct, then
            crop_pct, squash = (float(processor_crop), False) if shortest < 384 else (1.0, True)  # else squash
    return height, width, crop_pct, squash


def hf_preprocess(processor: Any, channels: int, spec: ModelSpec) -> dict[str, Any]:
    """The eval transform of a ``transformers`` image processor on gkt's [0, 1] scale: ``size``, ``mean``,
    ``std``, ``crop_pct``, ``interpolation``, ``squash`` and ``crop_rounding`` (the arguments of
    :func:`gkt.models.specs.make_preprocess`), as the processor applies them: a ``shortest_edge`` size
    resizes the shorter side (ConvNeXt's below 384 px: to ``shortest_edge / crop_pct``, then the centre
    ``shortest_edge``; LeViT's to 256/224 of it), a ``height``/``width`` size resizes both sides,
    ``crop_size`` (with ``do_center_crop``) crops the centre with offsets rounded down; EfficientNet's
    ``rescale_offset`` and ``include_top`` (a second division by the std) fold into mean and std."""
    what = f"hf:{spec.target}"
    check_processor(processor, what)
    family = processor_family(processor)
    height, width, crop_pct, squash = _geometry(processor, family)
    if height is None or height != width:
        raise GktError(f"{what}: the image processor's size {processor.size} is not a square input; give img_size=N")
    # The network sees ((x * scale + offset) - mean) / std with x in [0, 1]: fold scale and offset into
    # mean and std.
    rescale = getattr(processor, "do_rescale", True)
    scale = 255 * (processor.rescale_factor if rescale else 1.0)
    offset = -1.0 if rescale and getattr(processor, "rescale_offset", False) else 0.0
    if getattr(processor, "do_normalize", True) and processor.image_mean is not None:
        mean, std = list(processor.image_mean), list(processor.image_std)
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if family == "EfficientNetImageProcessor" and getattr(processor, "include_top", False):
        extra = list(processor.image_std)  # normalised once more, by the std alone
        std = [s * e for s, e in zip(std, extra * channels if len(extra) == 1 else extra)]
    return {"size": int(height), "mean": tuple((m - offset) / scale for m in mean),
            "std": tuple(s / scale for s in std), "crop_pct": min(1.0, crop_pct),
            "interpolation": _interpolation(getattr(processor, "resample", None)), "squash": squash,
            "crop_rounding": "floor"}
