"""The view gkt reads from a transformers image processor gives the processor's own pixels: shorter-side
and squash resizes, ``crop_pct`` (ConvNeXt, PoolFormer), centre crops rounded down, interpolation."""

from __future__ import annotations

import pytest
import torch

from gkt.models.preprocess import Preprocess, prepare
from gkt.models.sources import hf_preprocess
from gkt.models.specs import ModelSpec

STATS = {"image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3]}


def _processors() -> dict:
    import transformers as tf

    return {
        "vit squash": tf.ViTImageProcessor(size={"height": 20, "width": 20}, **STATS),
        "deit squash + crop": tf.DeiTImageProcessor(size={"height": 23, "width": 23}, crop_size={"height": 20,
                                                    "width": 20}, resample=3, **STATS),
        "convnext crop_pct": tf.ConvNextImageProcessor(size={"shortest_edge": 20}, crop_pct=0.875, resample=3, **STATS),
        "convnext >= 384 squash": tf.ConvNextImageProcessor(size={"shortest_edge": 384}, **STATS),
        "clip shortest + crop": tf.CLIPImageProcessor(size={"shortest_edge": 23}, crop_size={"height": 20, "width": 20},
                                                      resample=2, **STATS),
        "poolformer crop_pct": tf.PoolFormerImageProcessor(size={"shortest_edge": 20}, crop_pct=0.9,
                                                           crop_size={"height": 20, "width": 20}, **STATS),
    }


@pytest.mark.parametrize("kind", list(_processors()))
def test_gkt_view_equals_the_processor(kind: str) -> None:
    processor = _processors()[kind]
    pre = Preprocess(channels=3, **{("input_size" if k == "size" else k): v
                                    for k, v in hf_preprocess(processor, 3, ModelSpec("hf", kind)).items()})
    gen = torch.Generator().manual_seed(0)
    for height, width in [(31, 47), (53, 29), (40, 40)]:
        base = torch.rand(1, 3, 4, 4, generator=gen)  # smooth content, so resampling differences stay small
        image = (torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear") * 255).to(torch.uint8)
        theirs = processor(list(image), return_tensors="pt")["pixel_values"]
        view = pre.view.apply(image)  # what a decode plan gives the model: its view, resized as uint8
        ours = prepare(view, pre, torch.tensor(pre.mean).view(1, -1, 1, 1), torch.tensor(pre.std).view(1, -1, 1, 1),
                       at_input=True)
        assert ours.shape == theirs.shape, (kind, height, width)
        assert torch.allclose(ours, theirs, atol=1e-4), (kind, height, width, (ours - theirs).abs().max())
