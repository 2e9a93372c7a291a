from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_blobs, make_model, report_findings

from gkt.cli import main
from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.data.digits import load_digits_28
from gkt.data.subsets import class_subset
from gkt.kdep.alignment import StreamingMoments, power_temperature_scaling, svd_alignment_direct
from gkt.kdep.objectives import KdepObjective, ObjectiveConfig
from gkt.kdep.pretrain import build_student, pretrain
from gkt.models import save_checkpoint
from gkt.models.features import FeatureTap
from gkt.models.heads import head_keys, with_new_head


def random_features(n: int = 300, d: int = 12, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Features with a well separated spectrum (distinct singular values) and an optional large mean."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    scales = torch.linspace(3.0, 0.2, d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ basis.T + offset


def streaming(x: torch.Tensor, chunk_sizes: list[int]) -> StreamingMoments:
    moments = StreamingMoments(x.shape[1])
    for chunk in x.split(chunk_sizes):
        moments.update(chunk)
    return moments


def test_svd_alignment_targets_equal_direct_numpy_computation() -> None:
    x = random_features()
    alignment = streaming(x, [7, 100, 1, 192]).alignment()
    d_s = 5
    ours = (x.float() - alignment.mean) @ alignment.projection(d_s)
    # Direct computation with numpy: centre, SVD, top-d_s right singular vectors.
    xn = x.numpy()
    _, _, vh = np.linalg.svd(xn - xn.mean(0), full_matrices=False)
    direct = torch.from_numpy((xn - xn.mean(0)) @ vh[:d_s].T).float()
    signs = torch.sign((ours * direct).sum(0))  # singular vectors are defined up to sign
    assert torch.allclose(ours, direct * signs, atol=1e-4)
    assert torch.allclose(power_temperature_scaling(ours), power_temperature_scaling(direct * signs), atol=1e-3)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_streaming_and_direct_svd_agree(offset: float) -> None:
    x = random_features(offset=offset)
    direct = svd_alignment_direct(x)
    stream = streaming(x, [50] * 6).alignment()
    assert stream.count == direct.count == len(x)
    assert torch.allclose(stream.mean, direct.mean, rtol=1e-6)
    assert torch.allclose(stream.singular_values, direct.singular_values, rtol=1e-5)
    assert torch.allclose(stream.components, direct.components, atol=1e-5)  # same canonical signs


def test_wider_student_gets_zero_padded_projection() -> None:
    x = random_features(n=6, d=8)  # 6 centred samples span only 5 directions
    alignment = streaming(x, [4, 2]).alignment()
    assert alignment.components.shape == (8, 5) == (alignment.teacher_dim, 5)
    p = alignment.projection(12)
    assert p.shape == (8, 12)
    assert torch.equal(p[:, 5:], torch.zeros(8, 7))
    assert torch.allclose(p[:, :5].T @ p[:, :5], torch.eye(5), atol=1e-5)


def test_power_temperature_scaling_formula() -> None:
    t = torch.tensor([0.1, -0.8, 0.0, 2.7, -0.0001])
    expected = torch.tensor([1.0, -2.0, 0.0, 3.0, -(0.001 ** (1 / 3))])
    assert torch.allclose(power_temperature_scaling(t), expected, atol=1e-6)
    assert torch.allclose(power_temperature_scaling(torch.tensor([2.0, -8.0]), temperature=0.5, power=2.0),
                          torch.tensor([2.0, -4.0]))


@pytest.mark.parametrize("spec,dim,pooled_after_relu", [("zoo-arch:cnn?channels=[4,6]", 6, False),
                                                          ("zoo-arch:resnet?widths=[4,8,10]", 10, True),
                                                          ("zoo-arch:mlp?hidden=[20,7]", 7, False)])
def test_zoo_feature_tap_is_pre_activation(spec: str, dim: int, pooled_after_relu: bool) -> None:
    data = make_blobs(size=12)
    model = build_student(spec, data).eval()
    tap = FeatureTap(model)
    x = data.images[:5]
    features = tap(x)
    assert tap.layer == "features" and tap.dim == dim and features.shape == (5, dim)
    assert (features < 0).any()  # before the ReLU
    if pooled_after_relu:  # ResNet: the map before the last ReLU, pooled; the classifier pools after it
        trunk = model.net._trunk(model.normalize(x))
        assert torch.allclose(features, trunk.mean((2, 3)), atol=1e-6)
        assert torch.allclose(model.net.head(torch.relu(trunk).mean((2, 3))), model(x), atol=1e-5)
    else:
        assert torch.allclose(model.net.head(torch.relu(features)), model(x), atol=1e-5)


def test_timm_feature_tap_hooks_before_last_relu() -> None:
    data = make_blobs(size=28)
    model = build_student("timm:resnet10t", data).eval()
    tap = FeatureTap(model)
    assert tap.layer == "model.layer4.0.act2" and tap.dim == 512
    x = data.images[:3]
    pre = tap(x)
    post = FeatureTap(model, "model.layer4.0.act2:out")(x)
    assert pre.shape == post.shape == (3, 512) and (pre < 0).any() and (post >= 0).all()
    assert torch.allclose(post, model.net.forward_features(model.normalize(x)), atol=1e-5)
    with pytest.raises(GktError, match="no layer"):
        FeatureTap(model, "model.nope")


def test_trunk_ending_in_batchnorm_keeps_pooled_features() -> None:
    data = make_blobs(size=12)
    model = build_student("zoo-arch:convmixer?dim=8&depth=1&kernel_size=3&patch_size=4", data)
    tap = FeatureTap(model)  # ConvMixer blocks end with act -> BatchNorm: nothing to strip
    assert tap.layer == "features" and tap.dim == 8


def test_new_head_keeps_body_and_resets_head() -> None:
    data = make_blobs(num_classes=4)
    model = build_student("zoo-arch:resnet?widths=[4,8,8]", data, seed=1)
    assert head_keys(model.arch) == {"head.weight", "head.bias"}
    fresh = with_new_head(model, ["a", "b"], seed=2)
    assert fresh.num_classes == 2 and fresh.net.head.out_features == 2
    old, new = model.net.state_dict(), fresh.net.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("head."))
    same_size = with_new_head(model, [f"c{i}" for i in range(4)], seed=2)  # same class count: still a new head
    assert not torch.equal(same_size.net.head.weight, model.net.head.weight)


def test_kdep_pretraining_reduces_the_feature_loss() -> None:
    data = make_blobs(n_per_class=32, size=12)
    teacher = build_student("zoo-arch:cnn?channels=[6,12]", data, seed=5).eval()
    student = build_student("zoo-arch:cnn?channels=[4,16]", data, seed=0)  # d_s = 16 > d_t = 12
    result = pretrain(student, data, "kdep", Recipe(epochs=6, lr=0.05, batch_size=16), torch.device("cpu"),
                      teacher=teacher, cfg=ObjectiveConfig(cache_alignment=False))
    assert result.info["zero_padded_dims"] == 4 and result.info["teacher_dim"] == 12
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert result.student.provenance["kdep_pretrain"]["objective"] == "kdep"


def test_kdep_targets_online_equal_precomputed() -> None:
    data = make_blobs(n_per_class=10, size=12)
    teacher = build_student("zoo-arch:cnn?channels=[6,12]", data, seed=5).eval()
    student = build_student("zoo-arch:cnn?channels=[4,8]", data)
    cfg = ObjectiveConfig(cache_alignment=False)
    idx = torch.arange(7)
    x = data.images[idx].float() / 255
    losses = [KdepObjective(cfg, teacher, student, data, torch.device("cpu"), pre).loss(student, x, data.labels[idx], idx)
              for pre in (True, False)]
    assert torch.allclose(losses[0], losses[1], atol=1e-5)


def test_logit_kd_needs_matching_heads() -> None:
    data = make_blobs()
    teacher = build_student("zoo-arch:cnn?channels=[4,4]", data, [f"t{i}" for i in range(3)])
    with pytest.raises(GktError, match="logit KD"):
        pretrain(build_student("zoo-arch:cnn?channels=[4,4]", data), data, "logit-kd", Recipe(epochs=1, batch_size=8),
                 torch.device("cpu"), teacher=teacher)
    with pytest.raises(GktError, match="needs a teacher"):
        pretrain(build_student("zoo-arch:cnn?channels=[4,4]", data), data, "kdep", Recipe(epochs=1, batch_size=8),
                 torch.device("cpu"))


def test_datasets_extra() -> None:
    train, test = load_digits_28("train"), load_digits_28("test")
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert len(train) + len(test) == 1797 and abs(len(train) - len(test)) <= 10
    sub = class_subset(test, [7, 3])
    assert sub.class_names == ["7", "3"] and set(sub.labels.tolist()) == {0, 1}
    assert torch.equal(sub.labels == 0, test.labels[test.labels.eq(7) | test.labels.eq(3)] == 7)


def test_cli_pretrain_then_finetune(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    digits = load_digits_28("train")
    teacher = build_student("zoo-arch:cnn?channels=[4,8]", class_subset(digits, range(5)), seed=3)
    save_checkpoint(teacher, tmp_path / "teacher")
    common = ["--out", str(tmp_path / "runs"), "--threads", "2", "--device", "cpu"]
    assert main(["kdep", "pretrain", "--teacher", f"file:{tmp_path / 'teacher'}", "--student-arch",
                 "zoo-arch:cnn?channels=[4,10]", "--data", "digits", "--classes", "0-4", "--fraction", "0.3",
                 "--epochs", "2", "--batch-size", "32", "--output", str(tmp_path / "student"), *common]) == 0
    out = capsys.readouterr().out
    assert "zero_padded_dims" in out and "student: file:" in out
    sidecar = json.loads((tmp_path / "student.json").read_text())
    assert sidecar["provenance"]["kdep_pretrain"]["student_dim"] == 10
    assert main(["kdep", "finetune", "--model", f"file:{tmp_path / 'student'}", "--data", "digits", "--classes",
                 "5-9", "--per-class", "20", "--epochs", "1", *common]) == 0
    assert "test accuracy" in capsys.readouterr().out
    result = json.loads(next((tmp_path / "runs").glob("kdep-finetune-*/finetune.json")).read_text())
    assert result["train_samples"] == 100 and 0.0 <= result["test_acc"] <= 1.0
    run = next((tmp_path / "runs").glob("kdep-finetune-*"))
    assert f"test accuracy {100 * result['test_acc']:.2f}% on {result['test_samples']} samples" in report_findings(run)[0]
    assert main(["kdep", "pretrain", "--student-arch", "resnet", "--data", "digits", *common]) == 2
    assert "zoo-arch:NAME" in capsys.readouterr().err


def test_cli_benchmark_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["kdep", "benchmark", "--quick", "--pretrain-data", "digits", "--pretrain-classes", "0-4",
                 "--downstream", "digits[5-9]", "--student-arch", "zoo-arch:cnn?channels=[4,8]",
                 "--out", str(tmp_path), "--threads", "2", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    for method in ("none", "supervised-10%", "supervised-100%", "logit-kd-10%", "linear-align-10%", "kdep-10%"):
        assert method in out
    run = next(tmp_path.glob("kdep-benchmark-*"))
    assert (run / "accuracy_vs_time.png").stat().st_size > 1000
    rows = json.loads((run / "results.json").read_text())["rows"]
    # wall times are reported, never asserted on (a quick run can round to 0 s on a fast, idle machine)
    assert len(rows) == 6 and all(r["pretrain_s"] >= 0 for r in rows)
    summary = json.loads((run / "results.json").read_text())["summary"]
    found = report_findings(run)  # the methods, best first, in %
    best = max(summary, key=lambda r: r["mean_acc"])
    assert len(found) == 6 and found[0].startswith(f"{best['method']}: mean downstream accuracy {100 * best['mean_acc']:.2f}")


def test_a_damaged_cached_alignment_is_recomputed(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gkt.core.io import cache_home
    from gkt.kdep.alignment import fit_alignment

    data = make_blobs(n_per_class=6)
    teacher = make_model("mlp", 0, hidden=[8]).eval()
    first = fit_alignment(FeatureTap(teacher), data, torch.device("cpu"))
    (path,) = (cache_home() / "kdep").glob("alignment-*.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-16:] = b"\x3c" * 16  # damaged in place: same size, still a readable file
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="gkt"):
        again = fit_alignment(FeatureTap(teacher), data, torch.device("cpu"))
    assert "damaged" in caplog.text and torch.equal(again.components, first.components)
    path.write_bytes(b"garbage")
    assert torch.equal(fit_alignment(FeatureTap(teacher), data, torch.device("cpu")).mean, first.mean)


def test_the_split_teacher_cache_is_keyed_by_content_and_remade_when_damaged() -> None:
    from gkt.data.datasets import TensorImageDataset
    from gkt.experiments.kdep_benchmark import split_teacher

    images = torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pool = TensorImageDataset("pool", images, torch.arange(128) % 2, ["a", "b"])  # one batch of the recipe
    cpu = torch.device("cpu")
    first, _ = split_teacher(pool, cpu, epochs=1)
    path = next((Path(os.environ["GKT_HOME"]) / "kdep" / "teachers").glob("*.json"))
    path.write_text("{garbage")  # a damaged entry is trained again, not an error
    again, _ = split_teacher(pool, cpu, epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values()))
    other = TensorImageDataset("pool", 255 - images, pool.labels, ["a", "b"])  # same names and labels
    split_teacher(other, cpu, epochs=1)
    assert len(list(path.parent.glob("*.json"))) == 2  # other images: another teacher


def _new_run(runs: Path, *argv: str) -> tuple[int, Path | None]:
    """``gkt ARGV``'s exit code and the run directory it made under ``runs``."""
    before = set(runs.glob("kdep-pretrain-*"))
    code = main(list(argv))
    return code, next(iter(set(runs.glob("kdep-pretrain-*")) - before), None)


def _interrupt_before_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> object:
    """Ctrl-C as training reaches ``epoch`` (counted from 0); returns the real ``train_epoch`` to restore."""
    from gkt.engine.loop import TrainLoop

    original = TrainLoop.train_epoch

    def interrupted(self: TrainLoop) -> dict[str, float]:
        if self.epoch == epoch:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(TrainLoop, "train_epoch", interrupted)
    return original


def test_cli_pretrain_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    from gkt.engine.loop import TrainLoop
    from gkt.models import load_model

    digits = load_digits_28("train")
    teacher = build_student("zoo-arch:cnn?channels=[4,8]", class_subset(digits, range(5)), seed=3)
    save_checkpoint(teacher, tmp_path / "teacher")
    runs = tmp_path / "runs"
    common = ["--out", str(runs), "--threads", "1", "--device", "cpu"]
    args = ["kdep", "pretrain", "--teacher", f"file:{tmp_path / 'teacher'}", "--student-arch",
            "zoo-arch:cnn?channels=[4,10]", "--data", "digits", "--classes", "0-4", "--fraction", "0.3",
            "--epochs", "3", "--batch-size", "32", "--augment", "flip", "--seed", "5", *common]

    code, full = _new_run(runs, *args)
    assert code == 0
    original = _interrupt_before_epoch(monkeypatch, 2)
    code, broken = _new_run(runs, *args)
    assert code == 130 and not (broken / "student.safetensors").exists() and (broken / "state.pt").is_file()
    monkeypatch.setattr(TrainLoop, "train_epoch", original)
    resume = ["kdep", "pretrain", "--resume", str(broken)]
    assert _new_run(runs, *resume, "--seed", "6", *common)[0] == 2  # a conflicting option
    assert "the run used 5" in capsys.readouterr().err
    assert _new_run(runs, *resume, "--epochs", "1", *common)[0] == 2  # cannot shorten it
    assert "has done 2 epochs" in capsys.readouterr().err
    kept = {f: f.read_bytes() for f in tmp_path.glob("teacher.*")}
    for f in kept:
        f.unlink()
    save_checkpoint(build_student("zoo-arch:cnn?channels=[4,8]", class_subset(digits, range(5)), seed=4),
                    tmp_path / "teacher")  # the teacher's spec now names other weights
    assert _new_run(runs, "kdep", "pretrain", "--resume", str(broken), *common)[0] == 2
    assert "the teacher changed" in capsys.readouterr().err
    for f, raw in kept.items():
        f.write_bytes(raw)
    code, resumed = _new_run(runs, "kdep", "pretrain", "--resume", str(broken), *common)
    assert code == 0 and "resuming" in capsys.readouterr().out
    a = load_model(f"file:{full / 'student'}").net.state_dict()
    b = load_model(f"file:{resumed / 'student'}").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted run
    done = json.loads((resumed / "pretrain.json").read_text())
    assert done["losses"] == json.loads((full / "pretrain.json").read_text())["losses"] and len(done["losses"]) == 3
    assert done["resumed_from"] == str(broken)
    (broken / "state.pt").write_bytes(b"damaged")
    assert _new_run(runs, "kdep", "pretrain", "--resume", str(broken), *common)[0] == 2
    assert "checksum" in capsys.readouterr().err


@pytest.mark.parametrize("augment", [[], ["--augment", "flip"]])
def test_pretrain_with_an_unreadable_image_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       augment: list[str]) -> None:
    """Under --bad-images skip the unreadable image is left out from the epoch after it is found (without
    augmentation: from the start, by the teacher's pass), as a resumed run lists the folder."""
    from gkt.data.folder import load_image_folder
    from gkt.engine.loop import TrainLoop
    from gkt.models import load_model
    from tests.data.test_decode import write_jpeg_folder

    write_jpeg_folder(tmp_path / "data" / "train", {"a": 12, "b": 12}, truncated="b/broken.jpg")
    clean = write_jpeg_folder(tmp_path / "clean", {"a": 2, "b": 2})
    teacher = build_student("zoo-arch:cnn?channels=[4,8]", load_image_folder(clean, image_size=28, channels=1), seed=3)
    save_checkpoint(teacher, tmp_path / "teacher")
    runs = tmp_path / "runs"
    common = ["--out", str(runs), "--threads", "1", "--device", "cpu", "--bad-images", "skip"]
    args = ["kdep", "pretrain", "--teacher", f"file:{tmp_path / 'teacher'}", "--student-arch",
            "zoo-arch:cnn?channels=[4,10]", "--data", f"folder:{tmp_path / 'data'}", "--fraction", "1", "--epochs",
            "3", "--batch-size", "8", "--seed", "5", *augment, *common]

    monkeypatch.setenv("GKT_HOME", str(tmp_path / "home-full"))  # each run finds the broken image itself
    code, full = _new_run(runs, *args)
    assert code == 0
    monkeypatch.setenv("GKT_HOME", str(tmp_path / "home-resumed"))
    original = _interrupt_before_epoch(monkeypatch, 1)
    code, broken = _new_run(runs, *args)
    assert code == 130
    monkeypatch.setattr(TrainLoop, "train_epoch", original)
    code, resumed = _new_run(runs, "kdep", "pretrain", "--resume", str(broken), *common[:-2])  # its --bad-images
    assert code == 0
    a = load_model(f"file:{full / 'student'}").net.state_dict()
    b = load_model(f"file:{resumed / 'student'}").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "pretrain.json").read_text())["samples"] == 24
    assert json.loads((resumed / "config.json").read_text())["bad_images"] == "skip"  # recorded as it went on


def test_pretrain_and_finetune_keep_an_rgb_folder_rgb(tmp_path: Path) -> None:
    """folder:/hf: data are decoded as they are (RGB) at --img-size, not as the benchmark's 28 px gray."""
    from gkt.models import load_model
    from tests.data.test_decode import write_jpeg_folder

    for split in ("train", "val"):
        write_jpeg_folder(tmp_path / "data" / split, {"a": 6, "b": 6})
    common = ["--out", str(tmp_path / "runs"), "--threads", "1", "--device", "cpu", "--data",
              f"folder:{tmp_path / 'data'}", "--epochs", "1", "--batch-size", "4"]
    assert main(["kdep", "pretrain", "--student-arch", "zoo-arch:cnn?channels=[4,8]", "--objective", "supervised",
                 "--img-size", "20", "--fraction", "1", "--output", str(tmp_path / "student"), *common]) == 0
    student = load_model(f"file:{tmp_path / 'student'}")
    assert (student.preprocess.channels, student.preprocess.input_size) == (3, 20)
    assert student.preprocess.mean != (0.5, 0.5, 0.5)  # the data's own statistics, per channel
    assert main(["kdep", "finetune", "--model", f"file:{tmp_path / 'student'}", "--output",
                 str(tmp_path / "tuned"), *common]) == 0
    assert load_model(f"file:{tmp_path / 'tuned'}").preprocess.channels == 3
