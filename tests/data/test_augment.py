import pytest
import torch

from gkt.core.errors import GktError
from gkt.data.augment import compose


def test_augmentations_are_seeded_and_shape_preserving() -> None:
    x = torch.rand(16, 1, 12, 12)
    aug = compose(["flip", "crop", "erase"])
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_flip_and_translate_semantics() -> None:
    x = torch.arange(2 * 5 * 5, dtype=torch.float).view(2, 1, 5, 5)
    flipped = compose(["flip"])(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    shifted = compose(["crop"])(x, torch.Generator().manual_seed(0))
    # every non-zero pixel of a shifted image comes from the original, in order
    for i in range(2):
        kept = shifted[i][shifted[i] > 0]
        assert torch.all(kept[1:] > kept[:-1]) and set(kept.tolist()) <= set(x[i].flatten().tolist())


def test_unknown_augmentation() -> None:
    with pytest.raises(GktError, match="unknown augmentation"):
        compose(["rotate"])


def test_timm_jitter_scales_brightness_contrast_and_saturation_within_its_range() -> None:
    """``jitter`` (timm's colour_jitter=0.4): every image changed, values kept in [0, 1], hue left alone (a grey
    image stays grey), and the brightness factor of a flat image within [0.6, 1.4]."""
    from gkt.data.augment import AUGMENTATIONS

    flat = torch.full((64, 3, 4, 4), 0.5)
    out = AUGMENTATIONS["jitter"](flat, torch.Generator().manual_seed(0))
    assert out.min() >= 0.5 * 0.6 - 1e-6 and out.max() <= 0.5 * 1.4 + 1e-6
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 1] == out[:, 2]).all(), "grey stays grey: no hue shift"
    assert (out != flat).flatten(1).any(1).float().mean() > 0.9
    assert out.std() > 0.02
