"""The shared trainer: label independence of unsupervised methods, registry errors, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from gkt.core.errors import GktError
from gkt.data.datasets import TensorImageDataset
from gkt.models import ArchSpec, Classifier, Preprocess
from gkt.transfer import TransferConfig, create_method, run_transfer
from gkt.transfer.evaluation import classes_holding_share, partition_quality, transfer_metrics, transfer_rates
from tests.conftest import make_blobs


def tiny_model(names: list[str], seed: int, hidden: int = 16, size: int = 12) -> Classifier:
    torch.manual_seed(seed)
    return Classifier.create(ArchSpec("zoo", "mlp", len(names), 1, size, {"hidden": [hidden], "dropout": 0.1}),
                             Preprocess(size, 1, (0.4,), (0.3,)), names, name=f"tiny{seed}")


def with_labels(ds: TensorImageDataset, labels: torch.Tensor) -> TensorImageDataset:
    return TensorImageDataset(ds.name, ds.images, labels, ds.class_names)


def transferred(method: str, transfer_set: TensorImageDataset, test_set: TensorImageDataset) -> dict:
    torch.manual_seed(0)
    student, teacher = tiny_model(transfer_set.class_names, 1), tiny_model(transfer_set.class_names, 2, hidden=8)
    config = TransferConfig(method=method, epochs=2, lr=0.05, batch_size=16, augment=("flip",), seed=3)
    outcome = run_transfer(student, teacher, transfer_set, test_set, config, torch.device("cpu"))
    return outcome.model.net.state_dict()


@pytest.mark.parametrize("method", ["kl", "kl-dp-unsup", "kl-topk", "ce-soft"])
def test_unsupervised_methods_ignore_labels(method: str) -> None:
    data, test = make_blobs(n_per_class=24, seed=0), make_blobs(n_per_class=10, seed=1)
    garbage = with_labels(data, torch.randint(0, data.num_classes, (len(data),), generator=torch.Generator().manual_seed(5)))
    assert not create_method(method).uses_labels
    a, b = transferred(method, data, test), transferred(method, garbage, test)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_supervised_method_does_use_labels() -> None:
    """The counter-check: the same comparison tells a label-using method apart."""
    data, test = make_blobs(n_per_class=24, seed=0), make_blobs(n_per_class=10, seed=1)
    garbage = with_labels(data, (data.labels + 1) % data.num_classes)
    a, b = transferred("kl-dp", data, test), transferred("kl-dp", garbage, test)
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_run_transfer_history_and_mcl_result_is_slow_copy() -> None:
    data, test = make_blobs(n_per_class=24, seed=0), make_blobs(n_per_class=10, seed=1)
    student, teacher = tiny_model(data.class_names, 1), tiny_model(data.class_names, 2)
    before = {k: v.clone() for k, v in student.net.state_dict().items()}
    config = TransferConfig(method="xekl-mcl", method_args={"tau": 0.9, "every": 1}, epochs=2, lr=0.05, batch_size=16)
    outcome = run_transfer(student, teacher, data, test, config, torch.device("cpu"))
    assert [row["epoch"] for row in outcome.history] == [0, 1, 2]
    assert outcome.history[0]["delta_transf"] == 0 and outcome.final["status"] == "ok"
    assert all(torch.equal(before[k], v) for k, v in student.net.state_dict().items())  # input untouched
    assert outcome.model is not student and outcome.final["method_args"]["tau"] == 0.9
    slow = outcome.model.net.state_dict()  # the slow weights moved away from the pretrained ones
    assert any(not torch.equal(before[k], slow[k]) for k in before)


def test_registry_errors() -> None:
    with pytest.raises(GktError, match="unknown transfer method .nope.; known: cd, ce, ce-soft, crd, kl"):
        create_method("nope")
    with pytest.raises(GktError, match="accepts: temperature=1.0, lam=0.5"):
        create_method("xekl", {"lamda": "0.3"})
    with pytest.raises(GktError, match="not a valid float"):
        create_method("xekl", {"lam": "high"})
    assert create_method("kl-topk", {"k": "3"}).k == 3
    with pytest.raises(GktError, match="needs labels but the transfer set is unlabelled"):
        TransferConfig(method="kl-dp", unlabelled=True).build_method()
    assert not TransferConfig(method="kl-dp-unsup", unlabelled=True).build_method().uses_labels


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_student_mode_decides_whether_batchnorm_and_dropout_move_the_student(mode: str) -> None:
    """Distilling a BatchNorm + dropout student from its own copy: in eval mode the loss has nothing to teach,
    so the student stays put; in train mode BatchNorm statistics and dropout move it all the same."""
    data, test = make_blobs(n_per_class=24, seed=0), make_blobs(n_per_class=10, seed=1)
    torch.manual_seed(0)
    student = Classifier.create(ArchSpec("zoo", "cnn", data.num_classes, 1, 12, {"channels": [4, 8], "dropout": 0.5}),
                                Preprocess(12, 1, (0.4,), (0.3,)), data.class_names, name="bn-dropout")
    config = TransferConfig(method="kl", epochs=2, lr=0.05, batch_size=16, weight_decay=0.0, student_mode=mode)
    outcome = run_transfer(student, student.clone(), data, test, config, torch.device("cpu"))
    before, after = student.net.state_dict(), outcome.model.net.state_dict()
    moved = max((after[k].float() - before[k].float()).abs().max().item() for k in before)
    if mode == "eval":
        assert moved < 1e-5 and outcome.final["delta_transf"] == 0
    else:
        assert moved > 1e-3


def test_label_space_mismatch_is_an_error() -> None:
    data, test = make_blobs(n_per_class=24), make_blobs(n_per_class=10, seed=1)
    teacher = tiny_model(["a", "b", "c", "d"], 2)
    with pytest.raises(GktError, match="class names differ"):
        run_transfer(tiny_model(data.class_names, 1), teacher, data, test, TransferConfig(batch_size=16),
                     torch.device("cpu"))


def test_transfer_metrics_and_rates() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    teacher = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    before = torch.tensor([0, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    after = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    m = transfer_metrics(labels, teacher, before, after)
    assert m["acc"] == pytest.approx(4 / 8) and m["delta_transf"] == pytest.approx(0)
    assert m["knowledge_gain"] == pytest.approx(1 / 8) and m["knowledge_loss"] == pytest.approx(1 / 8)
    # positive flips (t right, s wrong): before {0, 1, 3} -> after {1, 3}
    assert m["delta_rho_pos"] == pytest.approx(2 / 8 - 3 / 8)
    # negative flips (s right, t wrong): before {4, 7} -> after {7}
    assert m["delta_rho_neg"] == pytest.approx(1 / 8 - 2 / 8)
    rates = transfer_rates(teacher, before, after, labels, 3)
    # positive flips per class: class 0 has 2, class 1 has 1 -> top-2%..50% = class 0 (1 of 2 now right)
    assert rates["transfer_rate_top50"] == pytest.approx(0.5) and rates["transfer_rate_top2"] == pytest.approx(0.5)
    assert rates["transfer_rate_top100"] == pytest.approx(1 / 3)
    assert math.isnan(transfer_rates(teacher & False, before, after, labels, 3)["transfer_rate_top5"])
    assert classes_holding_share(torch.tensor([1, 5, 0, 4]), 0.5).tolist() == [1]
    assert classes_holding_share(torch.tensor([1, 5, 0, 4]), 0.6).tolist() == [1, 3]


def test_partition_quality() -> None:
    mask = torch.tensor([1, 1, 0, 1, 0, 0], dtype=torch.bool)
    teacher = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    frozen = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool)
    q = partition_quality(mask, teacher, frozen)
    assert q["pos_flips_to_teacher"] == pytest.approx(2 / 3)  # positive flips 0, 1, 2
    assert q["neg_flips_to_teacher"] == pytest.approx(1 / 2)  # negative flips 3, 4
    assert q["samples_to_teacher"] == pytest.approx(1 / 2)


def test_a_transfer_decodes_its_data_into_each_models_own_view(tmp_path) -> None:
    """Folder images: the transfer set and the test set decoded once per image into each model's own eval view
    (as gkt analyze evaluates); in-memory data come back unchanged."""
    from gkt.data.spec import load_split
    from gkt.models.preprocess import decode_plan_for
    from gkt.transfer import decoded_for
    from tests.hubs import IMAGENETTE, image_folder

    image_folder(tmp_path / "imgs" / "val")
    image_folder(tmp_path / "imgs" / "train", seed=1)
    train, test = (load_split(f"folder:{tmp_path / 'imgs'}", split) for split in ("train", "val"))
    a, b = (Classifier.create(ArchSpec("zoo", "linear", len(IMAGENETTE), 3, size, {}),
                              Preprocess(size, 3, (0.5,) * 3, (0.25,) * 3, crop_pct=0.875), list(IMAGENETTE))
            for size in (16, 24))
    transfer_set, test_set = decoded_for([a, b], train, test)
    assert transfer_set.decode_plan == decode_plan_for([a.preprocess, b.preprocess])
    assert test_set.decode_plan == decode_plan_for([a.preprocess, b.preprocess]) and len(test_set.decode_plan) == 2
    blobs = make_blobs()
    assert decoded_for([a, b], blobs, blobs) == (blobs, blobs)
