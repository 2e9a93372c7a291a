"""``hf:``, ``torchvision:`` and timm-with-``pretrained_cfg`` sources: tiny random models saved locally,
loaded by spec, checkpointed, and used in transfers across sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.data.datasets import TensorImageDataset
from gkt.experiments.zoo import build_zoo
from gkt.models import DataInfo, ModelSpec, load_model, save_checkpoint
from gkt.models.sources import hf_preprocess
from gkt.models.zoo import ZooEntry
from gkt.transfer import TransferConfig, run_transfer
from tests.conftest import make_blobs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data() -> tuple[TensorImageDataset, TensorImageDataset, DataInfo]:
    train, test = make_blobs(24, size=12, seed=0), make_blobs(10, size=12, seed=1)
    return train, test, DataInfo.from_dataset(train)


def raw(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def save_hf_vit(path: Path, names: list[str], mean: tuple[float, ...] = (0.1, 0.2, 0.3)) -> Path:
    """A tiny random ``ViTForImageClassification`` (16×16 input, 3 channels) plus its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, id2label=dict(enumerate(names)),
                       label2id={n: i for i, n in enumerate(names)})
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=list(mean), image_std=[0.5, 0.4, 0.25]
                      ).save_pretrained(path)
    return path


def test_parse_new_specs() -> None:
    assert ModelSpec.parse("hf:/m/vit?img_size=32") == ModelSpec("hf", "/m/vit", None, {"img_size": 32})
    spec = ModelSpec.parse("torchvision:resnet18@w.pth?classes=imagenet1k")
    assert (spec.target, spec.weights, spec.options) == ("resnet18", "w.pth", {"classes": "imagenet1k"})
    with pytest.raises(GktError, match="hf:ORG/NAME"):
        ModelSpec.parse("nope:x")


def test_hf_model_preprocessing_labels_features_and_checkpoint(tmp_path: Path, data: tuple) -> None:
    from transformers import AutoImageProcessor

    _, _, info = data
    path = save_hf_vit(tmp_path / "vit", list(info.class_names))
    model = load_model(f"hf:{path}", info)
    assert model.class_names == list(info.class_names)
    pre = model.preprocess
    assert (pre.input_size, pre.channels) == (16, 3)
    assert pre.mean == pytest.approx((0.1, 0.2, 0.3)) and pre.std == pytest.approx((0.5, 0.4, 0.25))
    x = raw()
    with torch.no_grad():
        logits, features = model(x), model.features(x)
        # features are the classifier's input: the normalised CLS token
        assert features.shape == (3, 16)
        assert torch.allclose(model.net.model.classifier(features), logits, atol=1e-6)
        # the same as transformers on its image processor's own output (grey replicated, resized, normalised)
        pixels = AutoImageProcessor.from_pretrained(path)(list(x.expand(-1, 3, -1, -1)),
                                                          return_tensors="pt")["pixel_values"]
        theirs = model.net.model(pixel_values=pixels).logits
        # exactly on its decode-plan view (resized as uint8, as the processor does); a raw tensor batch is
        # resized as float (as in training), a rounding apart
        assert torch.allclose(model.forward_view(pre.view.apply(x)), theirs, atol=1e-5)
        assert torch.allclose(logits, theirs, atol=1e-3)
    loaded = load_model(f"file:{save_checkpoint(model, tmp_path / 'copy')}", info)
    assert torch.equal(loaded(x), logits) and loaded.arch.source == "hf"
    assert load_model(f"hf:{path}?img_size=24", info).preprocess.input_size == 24


def test_hf_processor_rescale_is_folded_into_mean_std(tmp_path: Path) -> None:
    from transformers import ViTImageProcessor

    spec = ModelSpec("hf", "x")
    unscaled = ViTImageProcessor(size={"height": 8, "width": 8}, do_rescale=False, image_mean=[127.5] * 3,
                                 image_std=[63.75] * 3)
    assert hf_preprocess(unscaled, 3, spec) == {"size": 8, "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0,
                                                "interpolation": "bilinear", "squash": True, "crop_rounding": "floor"}
    plain = ViTImageProcessor(size={"height": 8, "width": 8}, do_normalize=False)
    pre = hf_preprocess(plain, 3, spec)
    assert (pre["mean"], pre["std"]) == ((0.0,) * 3, (1 / 255 / plain.rescale_factor,) * 3)
    with pytest.raises(GktError, match="not a square input"):
        hf_preprocess(ViTImageProcessor(size={"height": 8, "width": 12}), 3, spec)


def test_hf_errors(tmp_path: Path, data: tuple) -> None:
    _, _, info = data
    with pytest.raises(GktError, match="no config.json"):
        load_model(f"hf:{tmp_path}", info)
    path = save_hf_vit(tmp_path / "vit", list(info.class_names))
    with pytest.raises(GktError, match="unknown options"):
        load_model(f"hf:{path}?depth=3", info)
    other = save_hf_vit(tmp_path / "vit-other", ["a", "b", "c", "d"])
    with pytest.raises(GktError, match="class names differ"):
        load_model(f"hf:{other}", info)
    for weights in path.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(GktError, match="no safetensors weights"):
        load_model(f"hf:{path}", info)


def test_torchvision_local_weights_classes_and_preprocessing(tmp_path: Path, data: tuple) -> None:
    _, _, info = data
    model = load_model("torchvision:mobilenet_v3_small?img_size=32", info)
    assert model.preprocess.mean == (0.485, 0.456, 0.406) and model.preprocess.input_size == 32
    state = {k: v.contiguous() for k, v in model.net.model.state_dict().items()}
    save_file(state, str(tmp_path / "mnv3.safetensors"))
    torch.save(state, tmp_path / "mnv3.pth")
    x = raw()
    for weights in ("mnv3.safetensors", "mnv3.pth"):
        loaded = load_model(f"torchvision:mobilenet_v3_small@{tmp_path / weights}?img_size=32", info)
        assert torch.equal(loaded(x), model(x))
    assert model.features(x).shape == (3, 1024)
    copy = load_model(f"file:{save_checkpoint(model, tmp_path / 'copy')}", info)
    assert torch.equal(copy(x), model(x))
    imagenet = load_model("torchvision:mobilenet_v3_small?img_size=32&classes=imagenet1k")
    assert imagenet.num_classes == 1000 and imagenet.class_names[1] == "goldfish"
    assert load_model("torchvision:mobilenet_v3_small?num_classes=7&img_size=32").class_names[-1] == "6"
    with pytest.raises(GktError, match="does not fit"):
        load_model(f"torchvision:mobilenet_v3_small@{tmp_path / 'mnv3.pth'}?img_size=32&classes=imagenet1k")
    with pytest.raises(GktError, match="torchvision has no architecture"):
        load_model("torchvision:mobilenet_v9", info)
    with pytest.raises(GktError, match="needs a dataset"):
        load_model("torchvision:mobilenet_v3_small")


def test_timm_hub_pretrained_cfg_sets_preprocessing_and_labels(tmp_path: Path, data: tuple) -> None:
    import timm
    from timm.models import save_for_hf

    _, _, info = data
    names = [f"hub{i}" for i in range(5)]
    net = timm.create_model("test_resnet", num_classes=5, in_chans=3)
    net.pretrained_cfg = {**net.pretrained_cfg, "input_size": (3, 20, 20), "mean": (0.1, 0.2, 0.3),
                          "std": (0.4, 0.5, 0.6)}
    save_for_hf(net, str(tmp_path / "hub"), model_config={"label_names": names}, safe_serialization=True)
    x = raw()
    for spec in (f"timm:test_resnet@{tmp_path / 'hub'}", f"timm:test_resnet@{tmp_path / 'hub' / 'model.safetensors'}"):
        model = load_model(spec)
        assert model.preprocess.input_size == 20 and model.preprocess.mean == (0.1, 0.2, 0.3)
        assert model.class_names == names and model.provenance["pretrained_cfg"]["input_size"] == [3, 20, 20]
        with torch.no_grad():
            assert torch.allclose(model(x), net.eval()(model.normalize(x)))
    bare = tmp_path / "cfg.json"
    bare.write_text(json.dumps({"input_size": [1, 24, 24], "mean": [0.3], "std": [0.2]}))
    model = load_model(f"timm:test_resnet?pretrained_cfg={bare}", info)
    assert (model.preprocess.input_size, model.preprocess.channels, model.preprocess.std) == (24, 1, (0.2,))
    assert model.class_names == list(info.class_names)
    assert load_model(f"timm:test_resnet?pretrained_cfg={bare}&img_size=16", info).preprocess.input_size == 16


def transfer(student, teacher, data: tuple, tmp_path: Path) -> dict:
    train, test, _ = data
    config = TransferConfig(method="kl-dp", epochs=1, lr=0.01, batch_size=32, seed=0)
    outcome = run_transfer(student, teacher, train, test, config, CPU, tmp_path / "run")
    assert outcome.final["status"] == "ok" and len(outcome.history) == 2
    return outcome.final


def test_transfer_hf_teacher_into_timm_student(tmp_path: Path, data: tuple) -> None:
    _, _, info = data
    teacher = load_model(f"hf:{save_hf_vit(tmp_path / 'vit', list(info.class_names))}", info)
    student = load_model("timm:test_resnet?img_size=16", info)
    final = transfer(student, teacher, data, tmp_path)
    transferred = load_model(final["checkpoint"], info)
    assert transferred.arch.source == "timm" and transferred.provenance["transfer"]["teacher"] == teacher.name


def test_transfer_torchvision_teacher_into_zoo_student(tmp_path: Path, data: tuple) -> None:
    train, test, info = data
    build_zoo([ZooEntry("lin", "linear", "linear", Recipe(2, "sgd", 0.1, 0.0, 16))], zoo_dir=tmp_path / "zoo",
              train_set=train, test_set=test, check=False)
    student = load_model("zoo:lin", info, zoo_dir=tmp_path / "zoo")
    teacher = load_model("torchvision:mobilenet_v3_small?img_size=32", info)
    final = transfer(student, teacher, data, tmp_path)
    assert load_model(final["checkpoint"], info).arch.source == "zoo"
