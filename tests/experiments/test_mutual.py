"""``gkt mutual``: the KL+DP rule both ways, one result from the CLI and the Python API, certified results
(a model that would lose keeps its original), and mutual transfer as a study method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gkt
from gkt.cli import main
from gkt.models import ArchSpec
from gkt.transfer.mutual import mutual_losses
from tests.experiments.test_improve import _train_split, _trained


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three models of different accuracies: weak (little training), middling, strong."""
    out = tmp_path_factory.mktemp("mutual-zoo")
    mlp = ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [32]})
    return [_trained(mlp, _train_split(0.005), 1, out / "weak"), _trained(mlp, _train_split(0.03, 1), 2, out / "mid"),
            _trained(ArchSpec("zoo", "mlp", 10, 1, 14, {"hidden": [64]}), _train_split(0.1, 2), 3, out / "strong")]


def test_each_model_learns_from_a_more_confident_peer_else_its_frozen_copy() -> None:
    a = torch.tensor([[4.0, 0.0], [0.0, 0.5]], requires_grad=True)  # sure of sample 0, unsure of sample 1
    b = torch.tensor([[0.5, 0.0], [0.0, 4.0]], requires_grad=True)  # the reverse
    frozen_a, frozen_b = a.detach().clone(), b.detach().clone()
    loss_a, loss_b = mutual_losses([a, b], [frozen_a, frozen_b], None)
    # a: sample 0 from its frozen copy (no loss, it is itself), sample 1 from b
    expected_a = F.kl_div(F.log_softmax(a[1:], -1), F.log_softmax(b[1:].detach(), -1), reduction="sum",
                          log_target=True) / 2
    assert loss_a.item() == pytest.approx(expected_a.item())
    loss_a.backward()
    assert b.grad is None and a.grad is not None  # the peer's outputs are targets only
    # with labels, confidence is the true-class probability: b is not more confident of a wrong class
    la, _ = mutual_losses([a.detach(), b.detach()], [frozen_a, frozen_b], torch.tensor([0, 0]))
    assert la.item() == pytest.approx(0.0, abs=1e-7)
    each = mutual_losses([a.detach(), b.detach(), a.detach() * 0], [frozen_a, frozen_b, frozen_a * 0], None, "each")
    assert len(each) == 3 and all(torch.isfinite(x) for x in each)


def test_mutual_certifies_each_model_and_the_api_equals_the_cli(three: list[str], tmp_path: Path) -> None:
    options = ["--fraction", "0.1", "--epochs", "1", "--lr", "0.03", "--threads", "2"]
    assert main(["mutual", "--models", *three, "--unlabelled", *options, "--out", str(tmp_path / "cli")]) == 0
    (run,) = (tmp_path / "cli").glob("mutual-*")
    final = json.loads((run / "final.json").read_text())
    entries = final["models"]
    assert [e["spec"] for e in entries] == three
    for e in entries:
        if e["accepted"]:
            assert e["certificate"]["lower_bound"] > 0 and e["model"] != e["spec"]
            assert Path(e["model"].removeprefix("file:") + ".safetensors").is_file()
        else:
            assert e["model"] == e["spec"]  # a result that is not certified is not used
    weakest = min(entries, key=lambda e: e["acc_before"])
    assert weakest["accepted"] and weakest["delta_transf"] > 0
    for name in ("models.csv", "report.html", "report.md"):
        assert (run / name).is_file()
    result = gkt.mutual(three, unlabelled=True, fraction=0.1, epochs=1, lr=0.03, out=tmp_path / "api",
                        say=lambda _: None)
    numbers = ("acc_before", "acc_after", "delta_transf", "knowledge_gain", "knowledge_loss", "accepted", "certificate")
    assert [{k: e[k] for k in numbers} for e in result.final["models"]] == [{k: e[k] for k in numbers} for e in entries]


def test_mutual_is_a_study_method(three: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["study", "--students", *three[:2], "--methods", "mutual-unsup", "--epochs", "1", "--fraction", "0.02",
                 "--lr", "0.01", "--threads", "2", "--out", str(tmp_path)]) == 0
    assert "2 jobs: 0 already done, 2 ran, 0 failed" in capsys.readouterr().out
    (run,) = tmp_path.glob("study-*")
    assert "mutual-unsup" in (run / "pairs.csv").read_text()


def test_mutual_refuses_bad_input(three: list[str]) -> None:
    assert main(["mutual", "--models", three[0]]) == 2
    assert main(["mutual", "--models", three[0], three[0]]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices
        main(["mutual", "--models", *three[:2], "--rule", "worst"])
    assert exit_info.value.code == 2
    assert main(["mutual", "--models", *three[:2], "--ce", "1", "--unlabelled"]) == 2


def test_hub_models_over_a_folder(offline_hubs, tmp_path: Path) -> None:  # noqa: ANN001
    """timm and transformers models from the hubs' caches teach each other over an image folder named by WordNet
    ids (aligned to their 1000 classes by name), each result certified or the original kept."""
    specs = ["timm:test_resnet.r160_in1k", "hf:gkt-tests/tiny-vit"]
    assert main(["mutual", "--models", *specs, "--data", f"folder:{offline_hubs.folder.parent}", "--batch-size", "8",
                 "--threads", "2", "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.glob("mutual-*")
    final = json.loads((run / "final.json").read_text())
    assert [e["spec"] for e in final["models"]] == specs and final["held_out_images"] == 30
    for e in final["models"]:
        assert e["model"] == e["spec"] or e["accepted"]


def test_two_gloo_processes_match_one(tmp_path: Path, tiny_fmnist_dir: Path) -> None:
    """``torchrun --nproc_per_node=2 -m gkt mutual`` gives one process's results (each model in DDP)."""
    import subprocess
    import sys

    from gkt.models import load_model
    from tests.engine.test_distributed import write_model

    models = [write_model(tmp_path / "a", 1, 16), write_model(tmp_path / "b", 2, 8)]
    args = ["mutual", "--models", *models, "--data-dir", str(tiny_fmnist_dir), "--fraction", "1.0", "--batch-size",
            "10", "--epochs", "2", "--lr", "0.05", "--threads", "1", "--device", "cpu", "--no-certify"]
    finals = []
    for name, launcher in (("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2"])):
        done = subprocess.run([*launcher, "-m", "gkt", *args, "--out", str(tmp_path / name)], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        (run,) = (tmp_path / name).iterdir()  # rank 1 wrote no run directory
        finals.append(json.loads((run / "final.json").read_text()))
    one, two = finals
    for a, b in zip(one["models"], two["models"]):
        for key in ("acc_before", "acc_after", "delta_transf", "knowledge_gain", "knowledge_loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
        wa, wb = (load_model(m["model"]).net.state_dict() for m in (a, b))
        assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
