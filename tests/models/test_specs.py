from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gkt.core.errors import GktError
from gkt.models import (
    ArchSpec,
    Classifier,
    DataInfo,
    ModelSpec,
    Preprocess,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

FMNIST_INFO = DataInfo(tuple(f"c{i}" for i in range(10)), 1, 28, (0.286,), (0.353,))


def _raw_batch(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_parse_specs() -> None:
    assert ModelSpec.parse("zoo:mlp") == ModelSpec("zoo", "mlp")
    spec = ModelSpec.parse("timm:resnet18@w/x.safetensors?drop_rate=0.1&global_pool=avg")
    assert (spec.source, spec.target, spec.weights) == ("timm", "resnet18", "w/x.safetensors")
    assert spec.options == {"drop_rate": 0.1, "global_pool": "avg"}
    assert ModelSpec.parse("file:/a/b.safetensors").target == "/a/b.safetensors"
    for bad in ("mlp", "hub:foo", "zoo:"):
        with pytest.raises(GktError):
            ModelSpec.parse(bad)


@pytest.mark.parametrize("arch", [
    ArchSpec("zoo", "linear", 10, 1, 7),
    ArchSpec("zoo", "mlp", 10, 1, 28, {"hidden": [32, 16], "dropout": 0.1}),
    ArchSpec("zoo", "cnn", 10, 1, 28, {"channels": [4, 8]}),
    ArchSpec("zoo", "resnet", 10, 1, 28, {"widths": [4, 8], "blocks": [1, 1]}),
    ArchSpec("zoo", "vit", 10, 3, 28, {"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2}),
    ArchSpec("zoo", "mixer", 10, 1, 28, {"patch_size": 7, "num_blocks": 1, "embed_dim": 16}),
    ArchSpec("zoo", "convmixer", 10, 1, 28, {"dim": 8, "depth": 1, "kernel_size": 3, "patch_size": 4}),
])
def test_checkpoint_round_trip_identical_logits(tmp_path: Path, arch: ArchSpec) -> None:
    pre = Preprocess(arch.img_size, arch.in_chans, (0.3,) * arch.in_chans, (0.4,) * arch.in_chans)
    model = Classifier.create(arch, pre, FMNIST_INFO.class_names, provenance={"note": "test"}).eval()
    path = save_checkpoint(model, tmp_path / "m")
    loaded = load_model(f"file:{path}", FMNIST_INFO)
    x = _raw_batch()
    assert torch.equal(model(x), loaded(x))
    assert loaded.preprocess == pre and loaded.provenance == {"note": "test"}
    assert loaded.features(x).ndim == 2


def test_checkpoint_never_overwrites(tmp_path: Path) -> None:
    model = Classifier.create(ArchSpec("zoo", "linear", 10, 1, 28), FMNIST_INFO.preprocess(), FMNIST_INFO.class_names)
    save_checkpoint(model, tmp_path / "m")
    with pytest.raises(GktError, match="never overwrites"):
        save_checkpoint(model, tmp_path / "m.safetensors")


def test_checkpoint_weights_without_sidecar_are_replaced(tmp_path: Path) -> None:
    """A save killed between the weights and the sidecar left no checkpoint: saving again succeeds."""
    model = Classifier.create(ArchSpec("zoo", "linear", 10, 1, 28), FMNIST_INFO.preprocess(), FMNIST_INFO.class_names)
    (tmp_path / "m.safetensors").write_bytes(b"half a file")
    save_checkpoint(model, tmp_path / "m")
    assert torch.equal(next(load_model(f"file:{tmp_path / 'm'}").parameters()), next(model.parameters()))


def test_checkpoint_label_count_mismatch(tmp_path: Path) -> None:
    model = Classifier.create(ArchSpec("zoo", "linear", 5, 1, 28), FMNIST_INFO.preprocess(), list("abcde"))
    path = save_checkpoint(model, tmp_path / "five")
    with pytest.raises(GktError, match="predicts 5 classes but the data has 10"):
        load_model(f"file:{path}", FMNIST_INFO)


def test_checkpoint_with_wrong_weights_is_clear_error(tmp_path: Path) -> None:
    model = Classifier.create(ArchSpec("zoo", "linear", 10, 1, 28), FMNIST_INFO.preprocess(), FMNIST_INFO.class_names)
    path = save_checkpoint(model, tmp_path / "m")
    save_file({"head.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(GktError, match="do not (fit|match)"):
        load_checkpoint(path)


def test_missing_sidecar(tmp_path: Path) -> None:
    save_file({"x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(GktError, match="sidecar not found"):
        load_model(f"file:{tmp_path / 'w.safetensors'}")


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224", "convnext_atto?img_size=64"])
def test_timm_spec_builds_for_fmnist(arch: str) -> None:
    model = load_model(f"timm:{arch}", FMNIST_INFO)
    assert model.net.model.num_classes == 10
    with torch.no_grad():
        assert model(_raw_batch(2)).shape == (2, 10)


def test_timm_local_weights_and_options(tmp_path: Path) -> None:
    source = load_model("timm:resnet10t?drop_rate=0.1", FMNIST_INFO)
    weights = tmp_path / "r10.safetensors"
    save_file({k: v.contiguous() for k, v in source.net.model.state_dict().items()}, str(weights))
    torch.save(source.net.model.state_dict(), tmp_path / "r10.pth")
    x = _raw_batch(2)
    for path in (weights, tmp_path / "r10.pth"):
        loaded = load_model(f"timm:resnet10t@{path}", FMNIST_INFO)
        assert torch.equal(source(x), loaded(x))
    with pytest.raises(GktError, match="does not fit"):
        load_model(f"timm:resnet18@{weights}", FMNIST_INFO)


def test_timm_errors() -> None:
    with pytest.raises(GktError, match="timm has no architecture"):
        load_model("timm:resnet_does_not_exist", FMNIST_INFO)
    with pytest.raises(GktError, match="needs a dataset"):
        load_model("timm:resnet18")


def test_per_model_preprocessing_of_one_raw_batch() -> None:
    x = _raw_batch(3)
    small = Classifier.create(ArchSpec("zoo", "linear", 10, 1, 7), Preprocess(7, 1, (0.5,), (0.5,)), FMNIST_INFO.class_names)
    rgb = Classifier.create(ArchSpec("zoo", "linear", 10, 3, 28), Preprocess(28, 3, (0.5,) * 3, (0.25,) * 3),
                            FMNIST_INFO.class_names)
    assert small.normalize(x).shape == (3, 1, 7, 7)
    y = rgb.normalize(x)
    assert y.shape == (3, 3, 28, 28)
    assert torch.allclose(y[:, 0], (x[:, 0].float() / 255 - 0.5) / 0.25)
    assert torch.equal(rgb.normalize(x), rgb.normalize(x.float() / 255))


def test_zoo_spec_not_built_gives_hint() -> None:
    with pytest.raises(GktError, match="gkt zoo build --only mlp"):
        load_model("zoo:mlp")
    with pytest.raises(GktError, match="no zoo model"):
        load_model("zoo:nonexistent")


def test_mlp_is_nonlinear() -> None:
    """Regression: a class-level default once shadowed the registered activation module."""
    model = Classifier.create(ArchSpec("zoo", "mlp", 10, 1, 28, {"hidden": [8]}), FMNIST_INFO.preprocess(),
                              FMNIST_INFO.class_names)
    assert isinstance(model.net.final_activation[0], torch.nn.ReLU)
    x = torch.rand(5, 1, 28, 28)
    f = model.net.forward_features(model.normalize(x))
    assert torch.allclose(model(x), model.net.head(torch.relu(f)))


def test_pixel_statistics_are_measured_only_for_models_that_need_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from gkt.data.datasets import TensorImageDataset

    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = TensorImageDataset("rgb", images, torch.arange(20) % 2, ["a", "b"])
    calls = []
    measure = data.pixel_stats
    monkeypatch.setattr(data, "pixel_stats", lambda: calls.append(1) or measure())
    info = DataInfo.from_dataset(data)
    own_norm = load_model("timm:test_vit?img_size=16&mean=[0.5,0.5,0.5]&std=[0.2,0.2,0.2]", info)
    assert calls == [] and own_norm.preprocess.std == (0.2, 0.2, 0.2)  # brings its own: nothing decoded
    fitted = load_model("timm:test_vit?img_size=16", info)
    again = load_model("timm:resnet10t?img_size=16", info)
    assert calls == [1]  # measured once, on first use
    assert fitted.preprocess.mean == again.preprocess.mean == pytest.approx(measure()[0])
    assert DataInfo(("a",), 1, 8, (0.3,), (0.2,)).preprocess().mean == (0.3,)
    with pytest.raises(ValueError, match="pixel statistics"):
        DataInfo(("a",), 1, 8).preprocess()
