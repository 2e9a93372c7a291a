"""A model's eval transform: channels, resize with crop_pct, interpolation; identities stay stable."""

from __future__ import annotations

import pytest
import torch

from gkt.models.preprocess import Preprocess, adapt_layout


def test_default_fields_leave_the_identity_unchanged() -> None:
    p = Preprocess(28, 1, (0.5,), (0.25,))
    assert p.to_dict() == {"input_size": 28, "channels": 1, "mean": (0.5,), "std": (0.25,)}
    q = Preprocess(224, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=0.875, interpolation="bicubic")
    assert Preprocess.from_dict(q.to_dict()) == q and Preprocess.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("kwargs", [{"crop_pct": 0.0}, {"crop_pct": 1.5}, {"interpolation": "lanczos"}])
def test_bad_fields_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Preprocess(8, 1, (0.5,), (0.5,), **kwargs)


def test_crop_pct_resizes_then_crops_the_centre() -> None:
    images = torch.zeros(1, 1, 16, 16)
    images[..., 4:12, 4:12] = 1.0  # a bright centre square, half the image
    out = adapt_layout(images, 1, 8, crop_pct=0.5)  # resize to 16 (no-op), crop the centre 8
    assert out.shape == (1, 1, 8, 8) and torch.equal(out, torch.ones(1, 1, 8, 8))
    plain = adapt_layout(images, 1, 8)
    assert plain.shape == (1, 1, 8, 8) and plain.mean() < 0.5


def test_non_square_input_keeps_its_aspect_then_crops() -> None:
    images = torch.rand(2, 3, 20, 40)
    out = adapt_layout(images, 3, 10, interpolation="bicubic")
    assert out.shape == (2, 3, 10, 10) and out.min() >= 0 and out.max() <= 1
