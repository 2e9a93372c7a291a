"""Eval views: the libraries' resize/crop arithmetic, PIL-equal resampling, and decode plans (each image
decoded once, every view taken from the full-size decode)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gkt.data.datasets import iterate_batches
from gkt.data.folder import load_image_folder
from gkt.data.views import View, apply_views, view_of


@pytest.mark.parametrize(("height", "width", "expected"), [(300, 400, (235, 313)), (400, 300, (313, 235)),
                                                           (235, 235, (235, 235)), (121, 397, (235, 771))])
def test_shorter_side_resize_floors_the_longer_side_as_torchvision(height: int, width: int, expected: tuple) -> None:
    from torchvision.transforms.functional import _compute_resized_output_size

    assert View(235, 224).resized_shape(height, width) == expected
    assert tuple(_compute_resized_output_size((height, width), [235])) == expected
    assert View(235, 224, squash=True).resized_shape(height, width) == (235, 235)


def test_centre_crop_offsets_round_as_torchvision_or_floor_as_transformers() -> None:
    assert View(235, 224).crop_offset(235) == 6  # torchvision CenterCrop: int(round(5.5)) == 6
    assert View(235, 224, crop_rounding="floor").crop_offset(235) == 5  # transformers: int(5.5) == 5
    assert View(236, 224).crop_offset(237) == 6 and View(236, 224).crop_offset(238) == 7


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_a_view_equals_torchvision_on_pil_images(interpolation: str) -> None:
    """``Resize(235, interpolation)`` + ``CenterCrop(224)`` on a PIL image (timm's and torchvision's eval
    pipeline): the same pixels to within resampling rounding."""
    from torchvision import transforms

    rng = np.random.default_rng(0)
    smooth = (np.sin(np.linspace(0, 9, 397))[None, :, None] * np.cos(np.linspace(0, 5, 301))[:, None, None] * 100
              + 128 + rng.normal(0, 8, (301, 397, 3))).clip(0, 255).astype(np.uint8)
    pil = Image.fromarray(smooth)
    mode = transforms.InterpolationMode(interpolation)
    theirs = np.asarray(transforms.Compose([transforms.Resize(235, mode), transforms.CenterCrop(224)])(pil))
    ours = View(235, 224, interpolation).apply(torch.from_numpy(smooth).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert ours.shape == theirs.shape == (224, 224, 3)
    assert diff.max() <= 1 and diff.mean() < 0.1


def test_each_image_is_decoded_once_for_every_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gkt.data.datasets as datasets_module

    for i, (h, w) in enumerate([(40, 60), (70, 50), (45, 45)]):
        (tmp_path / "a").mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
        (tmp_path / "a" / f"{i}.png").write_bytes(buf.getvalue())
    views = (View(35, 32, "bicubic"), View(36, 32, crop_rounding="floor"), View(20, 16, squash=True))
    dataset = load_image_folder(tmp_path, image_size=24).at_decode_plan(views)
    assert dataset.decode_plan == views and dataset.image_shape == (9, 32, 32)
    decodes = []
    original = datasets_module.decode_image
    monkeypatch.setattr(datasets_module, "decode_image", lambda *a: decodes.append(1) or original(*a))
    (batch, _, _), = iterate_batches(dataset, 3, workers=0)
    assert len(decodes) == 3 and batch.shape == (3, 9, 32, 32)
    full = original(torch.from_numpy(np.frombuffer((tmp_path / "a" / "1.png").read_bytes(), np.uint8).copy()), 3)
    for view in views:  # each view is exactly the view of the full-size decode
        assert torch.equal(view_of(batch, views, view)[1], view.apply(full))
    assert view_of(batch, views, View(40, 32)) is None
    assert torch.equal(apply_views(full, views[:1]), views[0].apply(full))


def test_plans_enter_the_dataset_identity(tmp_path: Path) -> None:
    from gkt.engine.predictions import dataset_identity

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a" / "0.png")
    dataset = load_image_folder(tmp_path, image_size=24)
    bicubic, bilinear = dataset.at_decode_plan((View(26, 24, "bicubic"),)), dataset.at_decode_plan((View(26, 24),))
    assert bicubic.image_shape == bilinear.image_shape
    assert len({dataset_identity(dataset), dataset_identity(bicubic), dataset_identity(bilinear)}) == 3


def test_a_pass_gives_each_model_its_view_and_others_the_largest(tmp_path: Path) -> None:
    """``predict_many`` over a planned folder: a model of the plan sees exactly its view; a model outside it
    resizes and crops the plan's largest view itself."""
    from dataclasses import replace

    from gkt.engine.predictions import predict_many
    from tests.conftest import make_model

    (tmp_path / "a").mkdir()
    for i, (h, w) in enumerate([(30, 44), (41, 27), (33, 33), (50, 38)]):
        pixels = np.random.default_rng(i).integers(0, 255, (h, w), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "a" / f"{i}.png")
    planned, outside = (make_model("cnn", seed, num_classes=2, size=12).eval() for seed in (0, 1))
    planned.preprocess = replace(planned.preprocess, crop_pct=0.8, interpolation="bicubic")
    outside.preprocess = replace(outside.preprocess, crop_pct=0.75)
    dataset = load_image_folder(tmp_path, image_size=16, channels=1)
    views = (planned.preprocess.view, View(20, 16))
    (batch, _, _), = iterate_batches(dataset.at_decode_plan(views), 4, workers=0)
    preds = predict_many([planned, outside], dataset.at_decode_plan(views), torch.device("cpu"), workers=0)
    with torch.no_grad():
        own = planned.forward_view(view_of(batch, views, views[0]))
        resized = outside(view_of(batch, views, views[1]))
        assert torch.allclose(preds[0].logits, own) and torch.allclose(preds[1].logits, resized)
        assert not torch.allclose(own, planned(view_of(batch, views, views[1])))  # its view is not the largest's
