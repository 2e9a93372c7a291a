"""A model's eval transform: channels, resize with crop_pct, interpolation, squash, crop rounding; decode
plans; identities stay stable."""

from __future__ import annotations

import pytest
import torch

from gkt.models.preprocess import Preprocess, adapt_layout


def test_default_fields_leave_the_identity_unchanged() -> None:
    p = Preprocess(28, 1, (0.5,), (0.25,))
    assert p.to_dict() == {"input_size": 28, "channels": 1, "mean": (0.5,), "std": (0.25,)}
    q = Preprocess(224, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=0.875, interpolation="bicubic", squash=True,
                   crop_rounding="floor")
    assert Preprocess.from_dict(q.to_dict()) == q and Preprocess.from_dict(p.to_dict()) == p
    assert q.to_dict()["squash"] is True and q.to_dict()["crop_rounding"] == "floor"


@pytest.mark.parametrize("kwargs", [{"crop_pct": 0.0}, {"crop_pct": 1.5}, {"interpolation": "lanczos"},
                                    {"crop_rounding": "ceil"}])
def test_bad_fields_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Preprocess(8, 1, (0.5,), (0.5,), **kwargs)


def test_crop_pct_resizes_then_crops_the_centre() -> None:
    images = torch.zeros(1, 1, 16, 16)
    images[..., 4:12, 4:12] = 1.0  # a bright centre square, half the image
    out = adapt_layout(images, 1, Preprocess(8, 1, (0.5,), (0.5,), crop_pct=0.5).view)  # resize 16 (no-op), crop 8
    assert out.shape == (1, 1, 8, 8) and torch.equal(out, torch.ones(1, 1, 8, 8))
    plain = adapt_layout(images, 1, Preprocess(8, 1, (0.5,), (0.5,)).view)
    assert plain.shape == (1, 1, 8, 8) and plain.mean() < 0.5


def test_non_square_input_keeps_its_aspect_then_crops() -> None:
    images = torch.rand(2, 3, 20, 40)
    out = adapt_layout(images, 3, Preprocess(10, 3, (0.5,) * 3, (0.5,) * 3, interpolation="bicubic").view)
    assert out.shape == (2, 3, 10, 10) and out.min() >= 0 and out.max() <= 1


def _reference(images: torch.Tensor, p: Preprocess) -> torch.Tensor:
    """The unfused transform: to [0, 1], adapt_layout, (x - mean) / std (a model's own resize of a tensor
    batch works on floats; decode plans resize ``uint8`` images as the libraries do)."""
    x = adapt_layout(images.float() / 255 if images.dtype == torch.uint8 else images, p.channels, p.view)
    return (x - torch.tensor(p.mean).view(1, -1, 1, 1)) / torch.tensor(p.std).view(1, -1, 1, 1)


@pytest.mark.parametrize("p", [Preprocess(16, 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), crop_pct=0.8),  # crop only
                               Preprocess(12, 3, (0.5,) * 3, (0.3,) * 3, crop_pct=0.875, interpolation="bicubic"),
                               Preprocess(10, 1, (0.5,), (0.2,))])  # resize and RGB -> gray
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_prepare_equals_the_unfused_transform(p: Preprocess, dtype: torch.dtype) -> None:
    from gkt.models.preprocess import prepare

    images = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    images = images if dtype == torch.uint8 else images.float() / 255
    out = prepare(images, p, torch.tensor(p.mean).view(1, -1, 1, 1), torch.tensor(p.std).view(1, -1, 1, 1))
    assert out.dtype == torch.float32 and torch.allclose(out, _reference(images, p), atol=1e-5)


def test_a_model_sees_the_same_input_from_uint8_and_float_batches() -> None:
    """Evaluation feeds raw uint8 tensors, training feeds float batches (after augmentation): a resizing
    model (the zoo's 7 and 14 px models) must see the same input from both."""
    from gkt.models.preprocess import prepare

    p = Preprocess(14, 1, (0.286,), (0.353,))
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    mean, std = torch.tensor(p.mean).view(1, -1, 1, 1), torch.tensor(p.std).view(1, -1, 1, 1)
    assert torch.equal(prepare(images, p, mean, std), prepare(images.float() / 255, p, mean, std))


def test_decode_size_is_the_largest_resize_of_a_pass() -> None:
    from gkt.models.preprocess import decode_size_for

    small = Preprocess(224, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=0.875)
    big = Preprocess(288, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=0.95)
    assert decode_size_for([small]) == 256 and decode_size_for([small, big]) == 303  # floor(288 / 0.95), as timm
    assert decode_size_for([Preprocess(28, 1, (0.5,), (0.5,))]) == 28


def test_decode_plan_holds_each_distinct_view_once() -> None:
    from gkt.models.preprocess import decode_plan_for

    timm_like = Preprocess(224, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=0.95, interpolation="bicubic")
    torchvision_like = Preprocess(224, 3, (0.4,) * 3, (0.2,) * 3, crop_pct=0.875)
    plan = decode_plan_for([timm_like, torchvision_like, timm_like])
    assert [(v.resize, v.crop, v.interpolation) for v in plan] == [(235, 224, "bicubic"), (256, 224, "bilinear")]
