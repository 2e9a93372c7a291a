"""Every spec form of a model held in the hubs' own caches, offline: timm names with tags and hf-hub ids
(timm's own pretrained loader), hf hub ids and snapshot directories, torchvision weights enums."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gkt.cli import main
from gkt.core.errors import GktError
from gkt.data.folder import load_image_folder
from gkt.models import DataInfo, load_model
from gkt.models.specs import display_name
from tests.hubs import HF_MODEL, IMAGENETTE, TIMM_MODELS, TORCHVISION_MODEL, HubCaches

RESNET, EFFNET = TIMM_MODELS


def folder_info(hubs: HubCaches) -> DataInfo:
    return DataInfo.from_dataset(load_image_folder(hubs.folder, image_size=64))


def test_timm_name_with_tag_and_hf_hub_id_load_pretrained_weights(offline_hubs: HubCaches) -> None:
    import timm

    reference = timm.create_model(RESNET, pretrained=True).eval()
    x = torch.rand(2, 3, 160, 160)
    for spec in (f"timm:{RESNET}", f"timm:hf-hub:timm/{RESNET}", "timm:test_resnet?pretrained=true"):
        model = load_model(spec)
        assert model.name == (RESNET if "?" not in spec else "test_resnet")
        pre = model.preprocess
        cfg = reference.pretrained_cfg
        assert (pre.input_size, pre.crop_pct, pre.interpolation) == (160, cfg["crop_pct"], cfg["interpolation"])
        assert pre.mean == pytest.approx(cfg["mean"]) and pre.std == pytest.approx(cfg["std"])
        assert model.num_classes == 1000 and model.class_names[0] == "n01440764"
        with torch.no_grad():
            assert torch.allclose(model.net(x), reference(x), atol=1e-5)
    # the view options a spec can set on any source (here: options win over the pretrained_cfg)
    pre = load_model(f"timm:{RESNET}?crop_pct=0.9&interpolation=bilinear").preprocess
    assert (pre.crop_pct, pre.interpolation) == (0.9, "bilinear")


def test_timm_pretrained_model_aligned_to_folder_and_round_trip(offline_hubs: HubCaches, tmp_path: Path) -> None:
    from gkt.models import save_checkpoint

    info = folder_info(offline_hubs)
    model = load_model(f"timm:{RESNET}", info, class_map="auto")  # WordNet-id folders match by name
    assert model.class_names == list(IMAGENETTE)
    copy = load_model(f"file:{save_checkpoint(model, tmp_path / 'copy')}", info)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(copy(x), model(x))


def test_hf_hub_id_and_snapshot_directory(offline_hubs: HubCaches) -> None:
    info = folder_info(offline_hubs)
    by_id = load_model(f"hf:{HF_MODEL}", info, class_map=offline_hubs.class_map)
    snapshot = next((offline_hubs.hf_home / "hub" / "models--gkt-tests--tiny-vit" / "snapshots").iterdir())
    by_dir = load_model(f"hf:{snapshot}", info, class_map=offline_hubs.class_map)
    assert by_id.name == by_dir.name == "tiny-vit"
    assert by_id.class_names == list(IMAGENETTE) and by_id.preprocess.input_size == 32
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(by_id(x), by_dir(x))
    with pytest.raises(GktError, match="not in the Hugging Face cache"):
        load_model("hf:gkt-tests/not-there")


def test_hf_vit_at_another_input_size(offline_hubs: HubCaches) -> None:
    """A ViT made for 32 px runs at 64 px (its position embeddings interpolated); an input it cannot take at
    all is refused when the model is loaded, not as a crash in the middle of a pass."""
    info = folder_info(offline_hubs)
    model = load_model(f"hf:{HF_MODEL}?img_size=64", info, class_map=offline_hubs.class_map)
    with torch.no_grad():
        assert model(torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8)).shape == (2, len(IMAGENETTE))
    with pytest.raises(GktError, match="cannot take 1x1 px input"):
        load_model(f"hf:{HF_MODEL}?img_size=1", info, class_map=offline_hubs.class_map)


def test_torchvision_weights_enum_from_torch_hub_cache(offline_hubs: HubCaches) -> None:
    import torchvision

    arch, weights = TORCHVISION_MODEL
    model = load_model(f"torchvision:{arch}?weights={weights}", folder_info(offline_hubs),
                       class_map=offline_hubs.class_map)
    assert model.name == f"{arch}.{weights}" and model.class_names == list(IMAGENETTE)
    transform = torchvision.models.get_model_weights(arch)[weights].transforms()
    pre = model.preprocess
    assert (pre.input_size, pre.interpolation) == (transform.crop_size[0], "bilinear")
    assert pre.crop_pct == pytest.approx(transform.crop_size[0] / transform.resize_size[0])
    with pytest.raises(GktError, match="no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        load_model(f"torchvision:{arch}?weights=IMAGENET1K_V9")
    with pytest.raises(GktError, match="resnet18-f37072fd.pth is not in the torch hub cache and "
                                       r"\$HF_HUB_OFFLINE=1 forbids downloading it"):
        load_model("torchvision:resnet18?weights=IMAGENET1K_V1")


def test_torchvision_weights_in_torchvision_s_dotted_form(offline_hubs: HubCaches) -> None:
    arch, weights = TORCHVISION_MODEL
    enum = "MobileNet_V3_Small_Weights"
    plain = load_model(f"torchvision:{arch}?weights={weights}")
    for spec in (f"torchvision:{arch}?weights={enum}.{weights}", f"torchvision:{arch}:{enum}.{weights}",
                 f"torchvision:{arch}:{weights}"):
        model = load_model(spec)
        assert (model.name, model.identity()) == (plain.name, plain.identity()), spec
    with pytest.raises(GktError, match="'ResNet18_Weights.IMAGENET1K_V1' are not mobilenet_v3_small's"):
        load_model(f"torchvision:{arch}:ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(GktError, match="give the weights once"):
        load_model(f"torchvision:{arch}:{weights}?weights={weights}")


def test_offline_torchvision_fails_at_once_naming_the_file(offline_hubs: HubCaches, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """GKT_OFFLINE=1 (or HF_HUB_OFFLINE=1): no download is tried for weights missing from the torch hub cache."""
    import torch.hub

    def no_network(*args, **kwargs):
        raise AssertionError("tried the network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("GKT_OFFLINE", "1")
    expected = offline_hubs.torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(GktError, match=rf"{expected} is not in the torch hub cache and \$GKT_OFFLINE=1 forbids"):
        load_model("torchvision:resnet18:ResNet18_Weights.IMAGENET1K_V1")
    assert main(["export", "torchvision:resnet18?weights=IMAGENET1K_V1", "--to", str(tmp_path / "x"),
                 "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(expected) in err[0] and "unset $GKT_OFFLINE where a network exists" in err[0]
    monkeypatch.setenv("GKT_OFFLINE", "maybe")
    with pytest.raises(GktError, match=r"\$GKT_OFFLINE='maybe'"):
        load_model("torchvision:resnet18?weights=IMAGENET1K_V1")


def test_typos_get_the_closest_names(offline_hubs: HubCaches) -> None:
    with pytest.raises(GktError, match="did you mean.*resnet18"):
        load_model("timm:resnet81.a1_in1k")
    with pytest.raises(GktError, match="no pretrained tag.*resnet18.a1_in1k"):
        load_model("timm:resnet18.a1_in1kk")
    with pytest.raises(GktError, match="did you mean.*mobilenet_v3_small"):
        load_model("torchvision:mobilenet_v3_smal?weights=DEFAULT")
    with pytest.raises(GktError, match="cannot load its pretrained weights.*Hugging Face cache"):
        load_model("timm:resnet18.a1_in1k")  # a known name whose weights are not in the cache


def test_display_names() -> None:
    snapshot = "/c/hub/models--timm--resnet18.a1_in1k/snapshots/abc"
    assert display_name(f"timm:resnet18@{snapshot}") == "resnet18.a1_in1k"
    assert display_name(f"timm:resnet18@{snapshot}/model.safetensors") == "resnet18.a1_in1k"
    assert display_name("hf:facebook/convnext-tiny-224") == "convnext-tiny-224"
    assert display_name(f"hf:{snapshot}") == "resnet18.a1_in1k"
    assert display_name("torchvision:resnet18?weights=IMAGENET1K_V1&img_size=160") == \
        "resnet18.IMAGENET1K_V1?img_size=160"
    assert display_name("torchvision:resnet18:ResNet18_Weights.IMAGENET1K_V1") == "resnet18.IMAGENET1K_V1"
    assert display_name("torchvision:resnet18?weights=ResNet18_Weights.DEFAULT") == "resnet18.DEFAULT"
    assert display_name("zoo:mlp") == "zoo:mlp"
    assert display_name("file:/runs/a/student.safetensors") == "student" and display_name("file:out/student") == \
        "student"
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert display_name(f"timm:hf-hub:timm/resnet18.a1_in1k@{commit}") == "resnet18.a1_in1k@01234567"
    assert display_name("hf:facebook/convnext-tiny-224@v1.0") == "convnext-tiny-224@v1.0"


def test_pinned_hub_revisions(offline_hubs: HubCaches) -> None:
    """``hf-hub:ORG/NAME@REVISION`` and ``hf:ORG/NAME@REVISION`` load that revision from the cache; another
    revision is a clear error."""
    timm_rev, hf_rev = f"{0:040x}", f"{1:040x}"  # the snapshots tests/hubs.py writes
    pinned = load_model(f"timm:hf-hub:timm/{TIMM_MODELS[0]}@{timm_rev}")
    plain = load_model(f"timm:hf-hub:timm/{TIMM_MODELS[0]}")
    assert pinned.identity() == plain.identity() and pinned.name == f"{TIMM_MODELS[0]}@00000000"
    model = load_model(f"hf:{HF_MODEL}@{hf_rev}")
    assert model.provenance["weights"].endswith(hf_rev) and model.name == "tiny-vit@00000000"
    with pytest.raises(GktError, match="cannot load its pretrained weights"):
        load_model(f"timm:hf-hub:timm/{TIMM_MODELS[0]}@{'f' * 40}")
    with pytest.raises(GktError, match="not in the Hugging Face cache"):
        load_model(f"hf:{HF_MODEL}@{'f' * 40}")
    with pytest.raises(GktError, match="neither a directory nor a Hugging Face hub id"):
        load_model(f"hf:{HF_MODEL}@")


def test_foreign_code_and_loader_options_are_refused(offline_hubs: HubCaches, tmp_path: Path) -> None:
    from gkt.models import save_checkpoint

    snapshot = next((offline_hubs.hf_home / "hub" / "models--gkt-tests--tiny-vit" / "snapshots").iterdir())
    evil = tmp_path / "evil"
    evil.mkdir()
    for f in snapshot.iterdir():
        (evil / f.name).write_bytes(f.read_bytes())
    config = json.loads((evil / "config.json").read_text())
    (evil / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.Config"}}))
    (evil / "evil.py").write_text("raise SystemExit('ran foreign code')\n")
    with pytest.raises(GktError, match="never runs code that comes with a model"):
        load_model(f"hf:{evil}")
    with pytest.raises(GktError, match=r"options \['checkpoint_path'\] are not allowed"):
        load_model(f"timm:{RESNET}?checkpoint_path=/etc/passwd")
    with pytest.raises(GktError, match=r"img_size='abc' must be an integer from 1 to 4096"):
        load_model(f"timm:{RESNET}?img_size=abc")
    # a sidecar naming a loader option is refused on load, not passed to timm
    info = DataInfo(tuple(IMAGENETTE), 3, 16, (0.5,) * 3, (0.5,) * 3)
    path = save_checkpoint(load_model("timm:test_resnet", info), tmp_path / "m")
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["arch"]["kwargs"]["checkpoint_path"] = "/etc/passwd"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(GktError, match="checkpoint_path"):
        load_model(f"file:{path}")


def test_a_pretrained_teacher_of_another_label_space_serves_kdep(offline_hubs: HubCaches) -> None:
    from gkt.kdep.pretrain import load_teacher

    folder = load_image_folder(offline_hubs.folder, image_size=64)
    subset_names = ["x", "y"]  # data whose classes are none of the teacher's: KDEP uses features only
    folder.class_names = subset_names
    folder.labels = folder.labels % 2
    with pytest.raises(GktError, match="label space"):
        load_model(f"timm:{RESNET}", DataInfo.from_dataset(folder))
    teacher = load_teacher(f"timm:{RESNET}", folder)
    assert teacher.num_classes == 1000


def test_gkt_offline_keeps_huggingface_hub_in_its_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """hf: and timm: weights come through huggingface_hub: under GKT_OFFLINE=1 it reads its cache only."""
    import huggingface_hub.constants as hub

    from gkt.models.offline import hub_cache_only

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    for value, offline in (("1", True), ("0", False)):
        monkeypatch.setenv("GKT_OFFLINE", value)
        with hub_cache_only():
            assert hub.is_offline_mode() is offline
        assert hub.is_offline_mode() is False
