"""The one training loop: it serves supervised training, KDEP pre-training and transfer; callbacks see
every epoch; its state resumes bit-identically; reduced precision runs on CPU; one outputs cache and one
model identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gkt.core.config import Recipe
from gkt.engine.loop import LoopConfig, Runtime, SupervisedTask, Task, TrainLoop, train_supervised
from gkt.engine.outputs_cache import CachedOutputs
from gkt.kdep.pretrain import PretrainTask, build_student, pretrain
from gkt.models.checkpoint import weights_hash
from gkt.models.features import FeatureTap
from gkt.models.preprocess import Preprocess
from gkt.transfer import TransferConfig, run_transfer
from gkt.transfer.trainer import TransferTask
from tests.conftest import make_blobs, make_model

CPU = torch.device("cpu")


def config(epochs: int = 2, **kw: object) -> LoopConfig:
    return LoopConfig(**{"epochs": epochs, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
                         "momentum": 0.9, "augment": (), "seed": 0, "warmup_epochs": 0.5, **kw})


def test_one_loop_serves_supervised_kdep_and_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type[Task]] = []
    original = TrainLoop.train_epoch

    def spy(self: TrainLoop) -> dict[str, float]:
        seen.append(type(self.task))
        return original(self)

    monkeypatch.setattr(TrainLoop, "train_epoch", spy)
    data, test = make_blobs(n_per_class=16, seed=0), make_blobs(n_per_class=4, seed=1)
    train_supervised(make_model("mlp", 0, hidden=[8]), data, Recipe(1, batch_size=16), CPU)
    teacher = make_model("cnn", 1, channels=[4, 8])
    pretrain(build_student("zoo-arch:cnn?channels=[4,4]", data), data, "kdep", Recipe(1, batch_size=16), CPU,
             teacher=teacher)
    run_transfer(make_model("mlp", 2, hidden=[8]), teacher, data, test,
                 TransferConfig(method="kl-dp", epochs=1, batch_size=16), CPU)
    assert seen == [SupervisedTask, PretrainTask, TransferTask]


def test_a_callback_sees_every_epoch() -> None:
    data = make_blobs(n_per_class=16)
    rows: list[tuple[int, dict[str, float]]] = []
    loop = TrainLoop(SupervisedTask(make_model("mlp", 0, hidden=[8])), data, config(epochs=3), CPU)
    loop.run(lambda lp, losses: rows.append((lp.epoch, losses)))
    assert [epoch for epoch, _ in rows] == [1, 2, 3] and loop.step == 3 * (len(data) // 16)
    assert all(set(losses) == {"train_loss", "loss_xe"} and losses["train_loss"] == losses["loss_xe"]
               for _, losses in rows)
    assert rows[-1][1]["train_loss"] < rows[0][1]["train_loss"]


def test_resumed_loop_is_bit_identical() -> None:
    """Optimiser, cosine schedule, data order, dropout RNG and weights all travel in the state."""
    data = make_blobs(n_per_class=16)
    cfg = config(epochs=3, augment=("flip",))
    whole = make_model("mlp", 0, hidden=[8], dropout=0.2)
    TrainLoop(SupervisedTask(whole), data, cfg, CPU).run()

    first = TrainLoop(SupervisedTask(make_model("mlp", 0, hidden=[8], dropout=0.2)), data, cfg, CPU)
    first.train_epoch()
    state = first.state_dict()
    torch.manual_seed(123)  # the global RNG is restored from the state
    resumed_model = make_model("mlp", 7, hidden=[8], dropout=0.2)
    resumed = TrainLoop(SupervisedTask(resumed_model), data, cfg, CPU)
    resumed.load_state_dict(state)
    resumed.run()
    assert resumed.epoch == 3 and weights_hash(resumed_model) == weights_hash(whole)


def test_train_supervised_is_the_loop_with_a_recipe() -> None:
    data = make_blobs(n_per_class=16)
    recipe = Recipe(2, "sgd", 0.05, 5e-4, 16, label_smoothing=0.1, augment=("flip",), warmup_epochs=0.5, seed=4)
    a, b = make_model("mlp", 0, hidden=[8]), make_model("mlp", 0, hidden=[8])
    history = train_supervised(a, data, recipe, CPU)
    losses: list[float] = []
    TrainLoop(SupervisedTask(b, 0.1), data, LoopConfig.from_recipe(recipe), CPU).run(
        lambda loop, epoch: losses.append(epoch["train_loss"]))
    assert [s.loss for s in history] == losses and weights_hash(a) == weights_hash(b)


class AutocastProbe(SupervisedTask):
    def losses(self, batch):
        out = super().losses(batch)
        self.seen = (torch.is_autocast_enabled("cpu"), self.forward(batch.x).dtype)
        return out


def test_bf16_autocast_on_cpu() -> None:
    data = make_blobs(n_per_class=16)
    task = AutocastProbe(make_model("mlp", 0, hidden=[8]))
    losses: list[float] = []
    TrainLoop(task, data, config(), CPU, Runtime(precision="bf16")).run(lambda lp, e: losses.append(e["train_loss"]))
    assert task.seen == (True, torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]
    assert next(task.model.parameters()).dtype == torch.float32  # master weights stay fp32
    plain = AutocastProbe(make_model("mlp", 0, hidden=[8]))
    TrainLoop(plain, data, config(), CPU).run()
    assert plain.seen == (False, torch.float32)
    assert weights_hash(plain.model) != weights_hash(task.model)  # bf16 rounding did take effect


def test_kdep_teacher_features_are_cached_by_content() -> None:
    data = make_blobs(n_per_class=8)
    teacher = make_model("cnn", 1, channels=[4, 8]).eval()  # a frozen teacher: BatchNorm in eval mode
    tap = FeatureTap(teacher)
    first = CachedOutputs(teacher, data, CPU, tap=tap)
    again = CachedOutputs(teacher, data, CPU, tap=FeatureTap(teacher))
    assert not first.from_store and again.from_store
    idx = torch.tensor([3, 0, 9])
    with torch.no_grad():
        assert torch.allclose(again.rows(idx, CPU), tap(data.load(idx)), atol=1e-6)
    assert again.table().shape == (len(data), tap.dim)
    other = make_model("cnn", 2, channels=[4, 8])  # other weights: another entry
    assert not CachedOutputs(other, data, CPU, tap=FeatureTap(other)).from_store
    logits = CachedOutputs(teacher, data, CPU, exact=True)  # the same mechanism for exact logits
    with torch.no_grad():
        assert torch.allclose(logits.rows(idx, CPU), teacher.eval()(data.load(idx)), atol=1e-6)
    # a table damaged in place (same size) fails its checksum: recomputed, never used
    from safetensors import safe_open

    from gkt.engine.predictions import store_dir

    def what(path: Path) -> str:
        with safe_open(str(path), framework="pt") as f:
            return f"{f.metadata()['model']} {f.metadata()['outputs']}"

    (path,) = [p for p in (store_dir() / "tables").glob("*.safetensors") if what(p) == f"{teacher.name} features:{tap.layer}"]
    expected = again.table().clone()
    raw = bytearray(path.read_bytes())
    raw[-64:] = bytes(64)
    path.write_bytes(bytes(raw))
    repaired = CachedOutputs(teacher, data, CPU, tap=FeatureTap(teacher))
    assert not repaired.from_store and torch.equal(repaired.table(), expected)


def test_identity_covers_weights_architecture_preprocessing_and_classes() -> None:
    model = make_model("mlp", 0, hidden=[8])
    assert model.identity() == model.clone().identity()
    assert make_model("mlp", 1, hidden=[8]).identity() != model.identity()
    assert make_model("mlp", 0, hidden=[9]).identity() != model.identity()
    renamed = model.clone()
    renamed.class_names = ["a", "b", "c", "d"]
    assert renamed.identity() != model.identity()
    other_preprocess = model.clone()
    other_preprocess.preprocess = Preprocess(12, 1, (0.5,), (0.3,))
    assert other_preprocess.identity() != model.identity()
