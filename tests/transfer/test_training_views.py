"""Training where the models live: during a transfer every frozen model computes its targets on its own
library view of each image, the student trains on its own view, and photo augmentation gives every model the
same random crop in its own preprocessing; the frozen models' outputs on each epoch's crops are stored once and
reused (FKD-style), giving the results of computing them online."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gkt.core.errors import GktError
from gkt.data.augment import split_augment
from gkt.data.datasets import TensorImageDataset
from gkt.data.views import CROPS, CropBox, EpochCrops, RandomCrop, View, per_view, view_of
from gkt.engine.predictions import dataset_identity
from gkt.models import ArchSpec, Classifier, Preprocess
from gkt.transfer import TransferConfig, decoded_for, run_transfer
from tests.hubs import IMAGENETTE, image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    image_folder(root / "train", per_class=6, seed=1)
    image_folder(root / "val", per_class=2, seed=2)
    return root


def model(size: int, interpolation: str, crop_pct: float, seed: int, arch: str = "linear") -> Classifier:
    torch.manual_seed(seed)
    return Classifier.create(ArchSpec("zoo", arch, len(IMAGENETTE), 3, size, {}),
                             Preprocess(size, 3, (0.45,) * 3, (0.25,) * 3, crop_pct, interpolation),
                             list(IMAGENETTE))


def test_a_crop_box_is_the_libraries_random_resized_crop_with_that_box() -> None:
    """Each view resizes the box as torchvision's ``resized_crop`` does on a PIL image (the libraries'
    ``RandomResizedCrop``), with the view's interpolation, to within resampling rounding."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    rng = np.random.default_rng(0)
    pixels = (np.sin(np.linspace(0, 7, 203))[None, :, None] * np.cos(np.linspace(0, 4, 151))[:, None, None] * 100
              + 128 + rng.normal(0, 6, (151, 203, 3))).clip(0, 255).astype(np.uint8)
    box = CropBox(17, 30, 101, 140, flip=True)
    for interpolation in ("bilinear", "bicubic"):
        view = View(64, 56, interpolation)
        theirs = np.asarray(F.hflip(F.resized_crop(Image.fromarray(pixels), 17, 30, 101, 140, [56, 56],
                                                   InterpolationMode(interpolation))))
        ours = box.apply(torch.from_numpy(pixels).permute(2, 0, 1), view).permute(1, 2, 0).numpy()
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert ours.shape == theirs.shape == (56, 56, 3)
        assert diff.max() <= 2 and diff.mean() < 0.2, (interpolation, diff.max(), diff.mean())


def test_crops_are_drawn_as_torchvision_draws_them_fixed_by_seed_epoch_and_row() -> None:
    from torchvision.transforms import RandomResizedCrop

    recipe = CROPS["photo"]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    box = recipe.draw(300, 400, seed=7)
    assert torch.equal(torch.get_rng_state(), before), "drawing a crop must leave torch's global RNG alone"
    torch.manual_seed(7)
    assert (box.top, box.left, box.height, box.width) == RandomResizedCrop.get_params(
        torch.empty(1, 300, 400), [0.08, 1.0], [3 / 4, 4 / 3])
    crops = EpochCrops(recipe, seed=0)
    assert crops.box(5, 300, 400) == crops.box(5, 300, 400)
    boxes = {crops.box(row, 300, 400) for row in range(20)}
    assert len(boxes) == 20, "every row draws its own crop"
    assert EpochCrops(recipe, 0, 1).box(5, 300, 400) != crops.box(5, 300, 400), "every epoch draws new crops"
    assert EpochCrops(recipe, 1, 0).box(5, 300, 400) != crops.box(5, 300, 400), "the seed changes the crops"
    flips = [crops.box(row, 300, 400).flip for row in range(200)]
    assert 70 < sum(flips) < 130


def test_every_model_sees_the_same_crop_in_its_own_view(folder: Path) -> None:
    """A decode plan of two views with photo augmentation: each view of the canvas equals that view decoded
    alone with the same crops, and differs between epochs; the identity of each epoch's data differs."""
    from gkt.data.spec import load_split

    a, b = model(16, "bicubic", 0.875, 0), model(24, "bilinear", 1.0, 1)
    train = load_split(f"folder:{folder}", "train")
    planned, _ = decoded_for([a, b], train, train)
    cropped = planned.with_crops(CROPS["photo"], seed=3)
    rows = torch.arange(8)
    canvas = cropped.for_epoch(0).load(rows)
    for m in (a, b):
        alone = cropped.at_decode_plan((m.preprocess.view,)).for_epoch(0).load(rows)
        assert torch.equal(view_of(canvas, planned.decode_plan, m.preprocess.view), alone)
        eval_view = planned.at_decode_plan((m.preprocess.view,)).load(rows)
        assert not torch.equal(alone, eval_view), "photo augmentation must change the inputs"
    assert not torch.equal(cropped.for_epoch(1).load(rows), canvas)
    ids = {dataset_identity(d) for d in (planned, cropped.for_epoch(0), cropped.for_epoch(1))}
    assert len(ids) == 3, "caches must tell the epochs' crops and the plain decode apart"
    # The same relative box: a mirrored image mirrors in every view.
    flips = [cropped.crops.box(int(r), 60, 60).flip for r in rows]
    assert any(flips) and not all(flips)


def test_batch_augmentations_draw_the_same_for_every_view() -> None:
    views = (View(8, 8), View(12, 12))
    batch = torch.zeros(4, 6, 12, 12)
    batch[:, :3, :8, :4] = 1.0  # left half of the small view
    batch[:, 3:, :12, :6] = 1.0  # left half of the large view
    from gkt.data.augment import random_hflip

    gen = torch.Generator().manual_seed(0)
    out = per_view(lambda x: random_hflip(x, gen), batch, views, gen)
    small, large = view_of(out, views, views[0]), view_of(out, views, views[1])
    flipped_small = small[:, 0, 0, -1] == 1.0
    flipped_large = large[:, 0, 0, -1] == 1.0
    assert torch.equal(flipped_small, flipped_large) and flipped_small.any() and not flipped_small.all()


def test_augment_names_split_into_the_decode_crop_and_batch_augmentations() -> None:
    assert split_augment(("photo", "erase")) == (CROPS["photo"], ("erase",))
    assert split_augment(("flip",)) == (None, ("flip",))
    with pytest.raises(GktError, match="unknown augmentation.*'blur'.*photo"):
        split_augment(("blur",))
    data = TensorImageDataset("t", torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4), ["a"])
    with pytest.raises(GktError, match="photo augmentation crops photos as they are decoded"):
        data.with_crops(RandomCrop(), 0)


def teacher_and_student() -> tuple[Classifier, Classifier]:
    return model(20, "bicubic", 0.875, 0, "mlp"), model(16, "bilinear", 0.9, 1, "mlp")


def test_a_frozen_models_training_targets_are_its_own_eval_view_outputs(folder: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without augmentation the teacher's targets during training are exactly its outputs in the library view
    an analysis evaluates (the same stored predictions), and cached targets give the online results."""
    from gkt.data.spec import load_split
    from gkt.engine.loop import Runtime, predict_logits
    from gkt.transfer.trainer import TransferTask

    monkeypatch.setenv("GKT_HOME", str(tmp_path / "home"))  # a store of its own
    teacher, student = teacher_and_student()
    train, test = (load_split(f"folder:{folder}", s) for s in ("train", "val"))
    transfer_set, test_set = decoded_for([student, teacher], train, test)
    seen: list[torch.Tensor] = []
    original = TransferTask.input_of

    def spy(self: TransferTask, m: Classifier, x: torch.Tensor) -> torch.Tensor:
        out = original(self, m, x)
        if m is self.teacher:
            seen.append(out)
        return out

    monkeypatch.setattr(TransferTask, "input_of", spy)
    config = TransferConfig(method="kl-dp", epochs=1, batch_size=len(transfer_set), lr=0.01)
    online = run_transfer(student, teacher, transfer_set, test_set, config, torch.device("cpu"),
                          runtime=Runtime(cache_outputs=False, loader_workers=0))
    assert seen, "the teacher ran on the batches"
    alone = transfer_set.at_decode_plan((teacher.preprocess.view,))
    expected = torch.cat([teacher.prepare_view(alone.load(torch.arange(len(alone))))])
    got = seen[0]
    assert got.shape == expected.shape
    # One shuffled batch of every row: compare as sets of rows, ordered by their sums.
    assert torch.allclose(got.sum((1, 2, 3)).sort().values, expected.sum((1, 2, 3)).sort().values, atol=1e-3)
    cached = run_transfer(student, teacher, transfer_set, test_set, config, torch.device("cpu"),
                          runtime=Runtime(cache_outputs=True, loader_workers=0))
    assert cached.final["acc"] == online.final["acc"]
    assert cached.final["train_loss"] == pytest.approx(online.final["train_loss"], rel=1e-5)
    stored = predict_logits(teacher, transfer_set, torch.device("cpu"))
    assert torch.allclose(stored, predict_logits(teacher, alone, torch.device("cpu")), atol=1e-6)


def test_photo_augmented_transfer_with_stored_targets_equals_the_teacher_online(folder: Path, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``--augment photo``: the frozen models' outputs on each epoch's crops are computed once and stored; a
    run reading them gives the run that computes them every step, and a second run reads them (no pass)."""
    from gkt.data.spec import load_split
    from gkt.engine import predictions
    from gkt.engine.loop import Runtime

    monkeypatch.setenv("GKT_HOME", str(tmp_path / "home"))  # a store of its own
    teacher, student = teacher_and_student()
    train, test = (load_split(f"folder:{folder}", s) for s in ("train", "val"))
    transfer_set, test_set = decoded_for([student, teacher], train, test)
    config = TransferConfig(method="kl-dp", epochs=2, batch_size=20, lr=0.05, augment=("photo",))
    device = torch.device("cpu")
    online = run_transfer(student, teacher, transfer_set, test_set, config, device,
                          runtime=Runtime(cache_outputs=False, loader_workers=0))
    passes: list[int] = []
    original = predictions.predict_many
    monkeypatch.setattr(predictions, "predict_many", lambda models, *a, **k: passes.append(len(models))
                        or original(models, *a, **k))
    cached = run_transfer(student, teacher, transfer_set, test_set, config, device,
                          runtime=Runtime(cache_outputs=True, loader_workers=0))
    assert [h["train_loss"] for h in cached.history[1:]] == pytest.approx(
        [h["train_loss"] for h in online.history[1:]], rel=1e-5)
    assert cached.final["acc"] == online.final["acc"]
    for a, b in zip(cached.model.state_dict().values(), online.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    crop_passes = len(passes)
    assert crop_passes >= 2, "one pass over each epoch's crops"
    again = run_transfer(student, teacher, transfer_set, test_set, config, device,
                         runtime=Runtime(cache_outputs=True, loader_workers=0))
    assert len(passes) == crop_passes, "a second run reads the stored outputs of every epoch"
    assert again.final["acc"] == cached.final["acc"]
    plain = run_transfer(student, teacher, transfer_set, test_set, TransferConfig(
        method="kl-dp", epochs=2, batch_size=20, lr=0.05), device, runtime=Runtime(loader_workers=0))
    assert plain.final["train_loss"] != pytest.approx(cached.final["train_loss"], rel=1e-3), \
        "augmentation must change what the student trains on"


@pytest.mark.parametrize("method", ["crd", "xekl-mcl", "kl-dp-multi", "kl-topk"])
def test_every_kind_of_method_trains_on_a_plan_of_views(folder: Path, method: str) -> None:
    """Feature, slow-weight and multi-teacher methods read each model's own view of a two-view plan, with
    photo augmentation too."""
    from gkt.data.spec import load_split
    from gkt.engine.loop import Runtime

    teacher, student = teacher_and_student()
    train, test = (load_split(f"folder:{folder}", s) for s in ("train", "val"))
    transfer_set, test_set = decoded_for([student, teacher], train, test)
    assert len(transfer_set.decode_plan) == 2
    teachers = [teacher, model(24, "bilinear", 1.0, 3, "mlp")] if method == "kl-dp-multi" else teacher
    for augment in ((), ("photo", "flip")):
        config = TransferConfig(method=method, epochs=1, batch_size=20, lr=0.01, augment=augment)
        outcome = run_transfer(student, teachers, transfer_set, test_set, config, torch.device("cpu"),
                               runtime=Runtime(loader_workers=0))
        assert outcome.final["status"] == "ok" and np.isfinite(outcome.final["train_loss"])


def test_study_jobs_of_one_teacher_share_its_stored_outputs_on_the_crops(folder: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``gkt study --augment photo``: two students of one teacher, each job photo-augmented; the teacher's
    outputs on the epoch's crops are computed in the first job only and read by the second."""
    import gkt
    from gkt.engine import predictions
    from gkt.models.checkpoint import save_checkpoint

    teacher, student = teacher_and_student()
    specs = [f"file:{save_checkpoint(m, tmp_path / name).with_suffix('')}"
             for m, name in ((teacher, "t"), (student, "s1"), (model(16, "bicubic", 1.0, 5, "mlp"), "s2"))]
    passes: list[list[str]] = []
    original = predictions.predict_many
    monkeypatch.setattr(predictions, "predict_many", lambda models, data, *a, **k: passes.append(
        [m.name for m in models] + [repr(getattr(data, "crops", None))]) or original(models, data, *a, **k))
    result = gkt.study(students=specs[1:], teachers=specs[:1], methods=["kl-dp"], data=f"folder:{folder}",
                       fraction=1.0, epochs=1, batch_size=20, augment=["photo"], out=tmp_path / "runs")
    assert result.counts.ok and result.counts.done == 2
    cropped = [p for p in passes if "EpochCrops" in p[-1]]
    teacher_passes = [p for p in cropped if "t" in p[:-1]]  # models loaded from file: are named by it
    assert len(cropped) == 2 and len(teacher_passes) == 1, passes
    jobs = json.loads((result.run_dir / "jobs.json").read_text())
    assert all(job["augment"] == ["photo"] for job in jobs)


def test_photo_augmentation_crops_a_folder_in_a_shifted_domain(folder: Path) -> None:
    """``folder:PATH@edges`` is still photos: the crops are drawn while decoding, the domain applied to each
    cropped view; each epoch's identity differs."""
    from gkt.data.spec import load_split

    a, b = model(16, "bicubic", 0.875, 0), model(24, "bilinear", 1.0, 1)
    train = load_split(f"folder:{folder}@edges", "train")
    planned, _ = decoded_for([a, b], train, train)
    cropped = planned.with_crops(CROPS["photo"], seed=0)
    rows = torch.arange(6)
    assert not torch.equal(cropped.for_epoch(0).load(rows), planned.load(rows))
    assert not torch.equal(cropped.for_epoch(0).load(rows), cropped.for_epoch(1).load(rows))
    assert len({dataset_identity(d) for d in (planned, cropped.for_epoch(0), cropped.for_epoch(1))}) == 3


def test_stored_targets_of_photo_augmentation_refuse_unreadable_images(tmp_path: Path) -> None:
    """``--bad-images skip`` with ``--augment photo``: the stored per-epoch targets would no longer line up
    with the training rows, so the run is refused with the way out; without the store it trains."""
    from gkt.data.spec import load_split
    from gkt.engine.loop import Runtime

    root = tmp_path / "photos"
    image_folder(root / "train", per_class=6, seed=1)
    image_folder(root / "val", per_class=2, seed=2)
    sorted((root / "train").rglob("*.jpg"))[40].write_bytes(b"not a jpeg")
    teacher, student = teacher_and_student()
    train, test = (load_split(f"folder:{root}", s, bad_images="skip") for s in ("train", "val"))
    transfer_set, test_set = decoded_for([student, teacher], train, test)
    config = TransferConfig(method="kl", epochs=1, batch_size=20, lr=0.05, augment=("photo",))
    with pytest.raises(GktError, match="1 image\\(s\\) could not be read .* --no-cache"):
        run_transfer(student, teacher, transfer_set, test_set, config, torch.device("cpu"),
                     runtime=Runtime(loader_workers=0))
    online = run_transfer(student, teacher, transfer_set, test_set, config, torch.device("cpu"),
                          runtime=Runtime(cache_outputs=False, loader_workers=0))
    assert online.final["status"] == "ok"
