"""Head adaptation: the linear probe leaves the backbone bit-identical, full fine-tuning does not, the
cache and provenance, and ``gkt adapt --transfer`` end to end on tiny models and the digits data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, report_findings

from gkt.adapt.heads import AdaptConfig, adapt_cached, adapt_model, head_inputs
from gkt.cli import main
from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.engine.loop import evaluate
from gkt.models import ArchSpec, Classifier, Preprocess, load_model, save_checkpoint
from gkt.models.heads import head_keys
from gkt.reporting.adapt import method_summary

ARCHS = [("linear", {}), ("mlp", {"hidden": [16]}), ("cnn", {"channels": [4, 8]}),
         ("resnet", {"widths": [4, 8], "blocks": [1, 1]}),
         ("vit", {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2})]
CPU = torch.device("cpu")


def _source(name: str, kwargs: dict, size: int = 12, classes: int = 4) -> Classifier:
    torch.manual_seed(0)
    arch = ArchSpec("zoo", name, classes, 1, size, kwargs)
    model = Classifier.create(arch, Preprocess(size, 1, (0.4,), (0.3,)), [f"src{c}" for c in range(classes)])
    model.train()(torch.rand(8, 1, size, size))  # move BatchNorm running stats away from their init
    return model.eval()


@pytest.mark.parametrize("name,kwargs", ARCHS, ids=[a for a, _ in ARCHS])
def test_probe_leaves_backbone_bit_identical(name: str, kwargs: dict) -> None:
    model = _source(name, kwargs)
    train, test = make_blobs(30, 3, seed=1), make_blobs(10, 3, seed=2)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    adapted, record = adapt_model(model, train, test, AdaptConfig(l2=(1e-3,)), CPU)
    heads = head_keys(model.arch)
    after = adapted.net.state_dict()
    assert heads and set(after) == set(before)
    for key, value in before.items():
        if key in heads:
            assert after[key].shape[0] == 3, key
        else:
            assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert adapted.class_names == train.class_names and adapted.preprocess == model.preprocess
    # the folded head reproduces the probe fitted on the captured head inputs
    assert evaluate(adapted, train, CPU) == pytest.approx(record["probe_train_acc"], abs=1e-6)
    assert record["test_acc"] == record["probe_test_acc"] > 0.5


def test_head_inputs_are_what_the_head_sees(blobs) -> None:
    model = _source("resnet", {"widths": [4, 8], "blocks": [1, 1]})  # pools after the last ReLU
    features = head_inputs(model, blobs, CPU, batch_size=7)
    with torch.no_grad():
        assert torch.allclose(model.net.head(features), model(blobs.images), atol=1e-5)


def test_full_finetuning_changes_the_backbone_and_probe_selects_l2() -> None:
    model = _source("mlp", {"hidden": [16]})
    train, test = make_blobs(30, 3, seed=1), make_blobs(10, 3, seed=2)
    cfg = AdaptConfig(mode="full", finetune=Recipe(epochs=2, lr=0.05, batch_size=16))
    adapted, record = adapt_model(model, train, test, cfg, CPU)
    assert not torch.equal(adapted.net.body[1].weight, model.net.body[1].weight)
    assert set(record["probe_val_acc"]) == {"0.0001", "0.001", "0.01", "0.1"} and record["l2"] in cfg.l2
    with pytest.raises(GktError, match="unknown adaptation mode"):
        adapt_model(model, train, test, AdaptConfig(mode="half"), CPU)


def _digits_source(tmp_path: Path, name: str, seed: int) -> str:
    torch.manual_seed(seed)
    model = _source("mlp", {"hidden": [8 + seed]}, size=14, classes=10)
    model.provenance = {"family": "mlp"}
    return f"file:{save_checkpoint(model, tmp_path / name).with_suffix('')}"


def test_adapt_cached_writes_checkpoint_with_provenance(tmp_path: Path) -> None:
    spec = _digits_source(tmp_path, "src", 0)
    adapted, record = adapt_cached(spec, "digits", AdaptConfig(l2=(1e-2,)), CPU)
    assert not record["cached"] and adapted.startswith("file:")
    model = load_model(adapted)
    assert model.class_names == [str(d) for d in range(10)] and model.provenance["family"] == "mlp"
    prov = model.provenance["adapt"]
    assert prov["source"] == spec and prov["target"] == "digits" and prov["mode"] == "probe"
    assert prov["test_acc"] == record["test_acc"] > 0.3
    again, cached = adapt_cached(spec, "digits", AdaptConfig(l2=(1e-2,)), CPU)
    assert again == adapted and cached["cached"]
    weights = Path(adapted.removeprefix("file:") + ".safetensors")
    weights.write_bytes(weights.read_bytes()[:3000])  # a damaged cache entry is made again, not an error
    repaired, record_again = adapt_cached(spec, "digits", AdaptConfig(l2=(1e-2,)), CPU)
    assert repaired == adapted and not record_again["cached"] and record_again["test_acc"] == record["test_acc"]


def test_adapt_cli_transfer_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    specs = [_digits_source(tmp_path, f"m{i}", i) for i in range(2)]
    args = ["adapt", "--models", *specs, "--data", "digits", "--l2", "0.01", "--transfer", "--methods", "kl",
            "kl-dp", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path), "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 transfer jobs: 0 already done, 4 ran, 0 failed" in out
    run = next(tmp_path.glob("adapt-*"))
    for name in ("adapted.csv", "results.sqlite", "by_method.csv", "success_table.csv",
                 "fig9_delta_transf_vs_delta_acc.png"):
        assert (run / name).is_file(), name
    with open(run / "pairs.csv") as f:
        assert {r["student"] for r in csv.DictReader(f)} == set(specs)  # labelled by source spec
    found = report_findings(run)  # the adapted models' accuracies (in %, as printed), then the study's findings
    with open(run / "adapted.csv") as f:
        for i, row in enumerate(csv.DictReader(f)):
            assert found[i].startswith(f"{row['model']} adapted to digits (probe): test accuracy "
                                       f"{float(row['test_acc']):.2f}%")
    assert any("kl-dp" in s for s in found[2:])
    assert "fig9_delta_transf_vs_delta_acc.png" in (run / "report.md").read_text()
    resumed = ["adapt", "--models", *specs, "--data", "digits", "--l2", "0.01", "--transfer", "--methods", "kl",
               "--seeds", "0", "--epochs", "1", "--resume", str(run), "--out", str(tmp_path / "again")]
    assert main(resumed) == 0
    out = capsys.readouterr().out
    assert "True" in out and "2 transfer jobs: 2 already done, 0 ran" in out  # adapted models and runs reused
    assert main(["adapt", "--models", specs[0], "--transfer", "--out", str(tmp_path)]) == 2


def test_method_summary_splits_weaker_and_stronger_teachers() -> None:
    def rec(teacher: str, seed: int, acc_t: float, delta: float) -> dict:
        return {"method": "kl", "student": "s", "teacher": teacher, "seed": seed, "acc_teacher": acc_t,
                "acc_student_before": 0.9, "delta_transf": delta, "knowledge_loss": 0.01}

    rows = method_summary([rec("weak", 0, 0.8, -0.02), rec("weak", 1, 0.8, -0.04),
                           rec("strong", 0, 0.95, 0.01), rec("strong", 1, 0.95, 0.03)])
    assert rows[0]["delta_transf_weaker_pp"] == "-3.00 ± 1.41" and rows[0]["delta_transf_stronger_pp"] == "+2.00 ± 1.41"
    assert rows[0]["worst_pair_pp"] == -3.0 and rows[0]["pairs_below_-0.1pp_%"] == 50.0
