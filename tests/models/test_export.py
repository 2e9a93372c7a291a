"""``gkt export``: a model goes back to its library's own format and loads there with the same logits."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gkt.cli import main
from gkt.core.errors import GktError
from gkt.data.folder import load_image_folder
from gkt.models import DataInfo, load_model, save_checkpoint
from gkt.models.class_map import SOURCE_CLASSES
from gkt.models.export import class_map_source_classes, export_model
from tests.conftest import make_model
from tests.hubs import HF_MODEL, IMAGENETTE, TIMM_MODELS, TORCHVISION_MODEL, HubCaches


def test_timm_student_exports_to_timm_and_transformers_with_the_same_logits(offline_hubs: HubCaches, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    import timm
    import transformers

    info = DataInfo.from_dataset(load_image_folder(offline_hubs.folder, image_size=64))
    student = load_model(f"timm:{TIMM_MODELS[0]}", info, class_map=offline_hubs.class_map)  # 1000 → 10 classes
    spec = f"file:{save_checkpoint(student, tmp_path / 'student')}"
    out = tmp_path / "export"
    assert main(["export", spec, "--to", str(out), "--out", str(tmp_path / "runs")]) == 0
    assert "timm format" in capsys.readouterr().out
    in_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    in_transformers = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    assert in_timm.pretrained_cfg["label_names"] == list(IMAGENETTE)
    assert in_transformers.config.id2label == dict(enumerate(IMAGENETTE))
    assert in_timm.pretrained_cfg["crop_pct"] == student.preprocess.crop_pct
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {  # readable by others, as the umask says
        p.name: 0o666 & ~umask for p in out.iterdir()}
    x = torch.rand(3, 3, 160, 160)
    with torch.no_grad():
        expected = student.net(x)
        assert expected.shape == (3, 10)
        assert torch.allclose(in_timm(x), expected, atol=1e-5)
        assert torch.allclose(in_transformers(pixel_values=x).logits, expected, atol=1e-5)
    assert main(["export", spec, "--to", str(out), "--out", str(tmp_path / "runs")]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err


def test_transformers_model_exports_with_its_processor(offline_hubs: HubCaches, tmp_path: Path) -> None:
    import transformers

    info = DataInfo.from_dataset(load_image_folder(offline_hubs.folder, image_size=64))
    model = load_model(f"hf:{HF_MODEL}", info, class_map=offline_hubs.class_map)
    fmt, out = export_model(model, tmp_path / "vit")
    assert fmt == "transformers"
    loaded = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert loaded.config.id2label == dict(enumerate(IMAGENETTE))
    again = load_model(f"hf:{out}", info)  # gkt reads the exported processor back as the same transform
    for pre in (again.preprocess, model.preprocess):
        assert (pre.input_size, math.floor(pre.input_size / pre.crop_pct), pre.interpolation) == (32, 36, "bilinear")
    assert processor.crop_size["height"] == 32
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).logits, model.net(x), atol=1e-5)


def test_torchvision_model_exports_as_a_state_dict_with_its_transforms(offline_hubs: HubCaches, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    import json

    import torchvision
    from safetensors.torch import load_file
    from torchvision.transforms._presets import ImageClassification
    from torchvision.transforms.functional import InterpolationMode

    arch, weights = TORCHVISION_MODEL
    info = DataInfo.from_dataset(load_image_folder(offline_hubs.folder, image_size=64))
    spec = f"torchvision:{arch}?weights={weights}"
    model = load_model(spec, info, class_map=offline_hubs.class_map)  # 1000 → 10 classes
    out = tmp_path / "tv"
    assert main(["export", spec, "--to", str(out), "--out", str(tmp_path / "runs")]) == 0
    assert "torchvision format" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}  # as any new file
    config = json.loads((out / "config.json").read_text())
    official = torchvision.models.get_model_weights(arch)[weights].transforms()
    transform = ImageClassification(**{**config["transforms"],
                                       "interpolation": InterpolationMode(config["transforms"]["interpolation"])})
    assert (transform.crop_size, transform.resize_size, transform.mean, transform.std, transform.interpolation) == (
        official.crop_size, official.resize_size, official.mean, official.std, official.interpolation)
    assert config["num_classes"] == 1000 and len(config["categories"]) == 1000  # no class map: as the hub has it
    mapped_out = tmp_path / "tv-mapped"
    export_model(model, mapped_out)
    mapped = json.loads((mapped_out / "config.json").read_text())
    assert mapped["num_classes"] == 10 and mapped["categories"] == list(IMAGENETTE)
    loaded = torchvision.models.get_model(mapped["architecture"], num_classes=mapped["num_classes"],
                                          **mapped["model_args"]).eval()
    loaded.load_state_dict(load_file(mapped_out / "model.safetensors"))
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.net(x), atol=1e-5)
    squashed = load_model(f"torchvision:{arch}?num_classes=2&img_size=32")
    squashed.preprocess = replace(squashed.preprocess, squash=True)
    with pytest.raises(GktError, match="not one torchvision's ImageClassification preset can describe"):
        export_model(squashed, tmp_path / "squashed")


def test_full_head_exports_a_map_that_merges_classes(offline_hubs: HubCaches, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import timm

    caplog.set_level("INFO")  # as the CLI logs

    info = DataInfo(("fish", "other"), 3, 16, (0.5,) * 3, (0.5,) * 3)
    merged = load_model(f"timm:{TIMM_MODELS[0]}", info, class_map={"fish": ["n01440764", "n01443537"],
                                                                   "other": ["n02102040"]})
    spec = f"file:{save_checkpoint(merged, tmp_path / 'merged')}"
    assert main(["export", spec, "--to", str(tmp_path / "no"), "--out", str(tmp_path / "runs")]) == 2
    assert "--full-head" in capsys.readouterr().err and not (tmp_path / "no").exists()
    out = tmp_path / "full"
    assert main(["export", spec, "--to", str(out), "--full-head", "--out", str(tmp_path / "runs")]) == 0
    assert "1000 classes: its full head" in capsys.readouterr().out
    assert not list((tmp_path / "runs").iterdir())  # no run folder left with only the check's log lines
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert loaded.pretrained_cfg["label_names"][:2] == ["n01440764", "n01443537"]
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(loaded(x), merged.net.base(x), atol=1e-5)
    # a transferred (or soup) student keeps the mapped student's provenance nested
    assert class_map_source_classes({"transfer": {}, "student_provenance": merged.provenance})[:1] == ["n01440764"]
    assert class_map_source_classes({"soup": [{}, merged.provenance]}) == merged.provenance[SOURCE_CLASSES]


def test_models_without_a_library_format_or_with_merged_classes_are_refused(offline_hubs: HubCaches,
                                                                           tmp_path: Path) -> None:
    info = DataInfo(("a",), 3, 16, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(GktError, match="no library format"):
        export_model(make_model("mlp", 0), tmp_path / "x")
    merged = load_model(f"timm:{TIMM_MODELS[0]}", info, class_map={"a": ["n01440764", "n01443537"]})
    with pytest.raises(GktError, match="merges several model classes"):
        export_model(merged, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
