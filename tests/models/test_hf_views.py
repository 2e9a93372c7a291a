"""The view gkt reads from a transformers image processor gives the processor's own pixels, for every
processor family of the image-classification zoo gkt accepts, built offline with their hub settings (sizes
scaled down): shorter-side and squash resizes, ``crop_pct`` (ConvNeXt, ResNet, PoolFormer), LeViT's 256/224
resize, EfficientNet's second division by the std, centre crops rounded down, interpolation (nearest,
bilinear, bicubic); processors gkt cannot reproduce are refused."""

from __future__ import annotations

import functools

import pytest
import torch

from gkt.core.errors import GktError
from gkt.models.hf_processors import PROCESSORS, processor_family
from gkt.models.preprocess import Preprocess, prepare
from gkt.models.sources import hf_preprocess
from gkt.models.specs import ModelSpec

STATS = {"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3]}
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
HALF = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}


@functools.cache
def _processors(backend: str = "") -> dict:
    """Each family as its hub checkpoints configure it (e.g. google/vit-base-patch16-224, facebook/deit-base-
    distilled-patch16-224 resize 256 + crop 224, microsoft/resnet-50 crop_pct 0.875, google/efficientnet-b0
    nearest + include_top, facebook/dinov2-small-imagenet1k-1-layer shortest edge 256 + crop 224), at ~1/10
    of the size. ``backend``: ``""`` (torchvision, transformers' default) or ``"Pil"``."""
    import transformers as tf

    def make(name: str, **kwargs) -> object:
        return getattr(tf, name + backend)(**kwargs)

    square, crop = {"height": 22, "width": 22}, {"height": 22, "width": 22}
    return {
        "vit squash": make("ViTImageProcessor", size={"height": 20, "width": 20}, **STATS),
        "vit (google/vit-base)": make("ViTImageProcessor", size=square, resample=2, **HALF),
        "swin (ViT processor, bicubic)": make("ViTImageProcessor", size=square, resample=3, **IMAGENET),
        "deit squash + crop": make("DeiTImageProcessor", size={"height": 23, "width": 23},
                                   crop_size={"height": 20, "width": 20}, resample=3, **STATS),
        "deit 256 → 224": make("DeiTImageProcessor", size={"height": 25, "width": 25}, crop_size=crop, resample=3,
                               **IMAGENET),
        "beit": make("BeitImageProcessor", size=square, crop_size=crop, do_center_crop=False, resample=2, **HALF),
        "convnext crop_pct": make("ConvNextImageProcessor", size={"shortest_edge": 20}, crop_pct=0.875, resample=3,
                                  **STATS),
        "convnext >= 384 squash": make("ConvNextImageProcessor", size={"shortest_edge": 384}, **STATS),
        "resnet (ConvNeXt processor)": make("ConvNextImageProcessor", size={"shortest_edge": 22}, crop_pct=0.875,
                                            resample=3, **IMAGENET),
        "efficientnet nearest + include_top": make(
            "EfficientNetImageProcessor", size=square, crop_size={"height": 29, "width": 29}, do_center_crop=False,
            resample=0, include_top=True, rescale_offset=False, image_mean=IMAGENET["image_mean"],
            image_std=[0.47853944, 0.4732864, 0.47434163]),
        "efficientnet rescale_offset": make("EfficientNetImageProcessor", size=square, rescale_offset=True,
                                            include_top=False, resample=3, **STATS),
        "mobilenet v1": make("MobileNetV1ImageProcessor", size={"shortest_edge": 25}, crop_size=crop, resample=2,
                             **HALF),
        "mobilenet v2": make("MobileNetV2ImageProcessor", size={"shortest_edge": 25}, crop_size=crop, resample=2,
                             **HALF),
        "dinov2 (BiT processor)": make("BitImageProcessor", size={"shortest_edge": 25}, crop_size=crop, resample=3,
                                       **IMAGENET),
        "levit 256/224": make("LevitImageProcessor", size={"shortest_edge": 22}, crop_size=crop, resample=3,
                              **IMAGENET),
        "pvt": make("PvtImageProcessor", size=square, **IMAGENET),
        "segformer (MiT)": make("SegformerImageProcessor", size=square, **IMAGENET),
        "siglip": make("SiglipImageProcessor", size=square, resample=3, **HALF),
        "clip shortest + crop": make("CLIPImageProcessor", size={"shortest_edge": 23},
                                     crop_size={"height": 20, "width": 20}, resample=2, **STATS),
        "poolformer crop_pct": make("PoolFormerImageProcessor", size={"shortest_edge": 20}, crop_pct=0.9,
                                    crop_size={"height": 20, "width": 20}, **STATS),
    }


def _photos(gen: torch.Generator) -> list[torch.Tensor]:
    """Three small photo-like images (smooth content, so resampling differences stay small) of varied
    sizes and aspect ratios, ``uint8 [1, 3, H, W]``."""
    images = []
    for height, width in [(31, 47), (53, 29), (40, 40)]:
        base = torch.rand(1, 3, 4, 4, generator=gen)
        images.append((torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear") * 255)
                      .to(torch.uint8))
    return images


def _compare(processor: object, kind: str, grey_levels: float) -> None:
    """gkt's view of each photo equals the processor's pixels within ``grey_levels`` / 255 (in normalised
    units: divided by the std), and a random linear head picks the same class on both."""
    pre = Preprocess(channels=3, **{("input_size" if k == "size" else k): v
                                    for k, v in hf_preprocess(processor, 3, ModelSpec("hf", kind)).items()})
    gen = torch.Generator().manual_seed(0)
    head = None
    for image in _photos(gen):
        theirs = processor(list(image), return_tensors="pt")["pixel_values"]
        view = pre.view.apply(image)  # what a decode plan gives the model: its view, resized as uint8
        ours = prepare(view, pre, torch.tensor(pre.mean).view(1, -1, 1, 1), torch.tensor(pre.std).view(1, -1, 1, 1),
                       at_input=True)
        assert ours.shape == theirs.shape, (kind, image.shape)
        tolerance = grey_levels / 255 / torch.tensor(pre.std).view(1, -1, 1, 1) + 1e-4
        assert ((ours - theirs).abs() <= tolerance).all(), (kind, image.shape, (ours - theirs).abs().max())
        head = head if head is not None else torch.randn(ours[0].numel(), 10, generator=gen)
        assert (ours.flatten(1) @ head).argmax() == (theirs.flatten(1) @ head).argmax(), kind


@pytest.mark.parametrize("kind", list(_processors()))
def test_gkt_view_equals_the_processor(kind: str) -> None:
    """transformers' default (torchvision) processors: equal to 10⁻⁴ grey levels."""
    _compare(_processors()[kind], kind, grey_levels=0.0)


@pytest.mark.parametrize("kind", ["vit (google/vit-base)", "deit 256 → 224", "resnet (ConvNeXt processor)",
                                  "efficientnet rescale_offset", "dinov2 (BiT processor)", "levit 256/224"])
def test_gkt_view_equals_the_pil_processor(kind: str) -> None:
    """The PIL backends (``use_fast=False``) round to uint8 after resizing: within one grey level (PIL's
    nearest-neighbour resize breaks exact half-pixel ties the other way, so only the antialiased kinds)."""
    _compare(_processors("Pil")[kind], kind, grey_levels=1.0)


def test_every_accepted_processor_family_is_checked() -> None:
    assert {processor_family(p) for p in _processors().values()} == set(PROCESSORS)


def test_processors_gkt_cannot_reproduce_are_refused() -> None:
    import transformers as tf

    refused = {
        "MobileViTImageProcessor is not one": tf.MobileViTImageProcessor(size={"shortest_edge": 25},
                                                                           crop_size={"height": 22, "width": 22}),
        "PerceiverImageProcessor is not one": tf.PerceiverImageProcessor(size={"height": 22, "width": 22}),
        "turns on do_pad": tf.ViTImageProcessor(size={"height": 22, "width": 22}, do_pad=True,
                                                pad_size={"height": 24, "width": 24}),
    }
    for message, processor in refused.items():
        with pytest.raises(GktError, match=message):
            hf_preprocess(processor, 3, ModelSpec("hf", "x"))
