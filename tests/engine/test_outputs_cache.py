"""Runtime options change how a transfer runs, not its result: cached outputs (exact top-k reconstruction,
memory maps), DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gkt.engine.loop import Runtime
from gkt.engine.outputs_cache import CachedOutputs, mmap_safetensors
from gkt.engine.predictions import get_predictions, save_predictions, store_dir
from gkt.transfer import TransferConfig, run_transfer
from tests.conftest import make_blobs
from tests.transfer.test_trainer import tiny_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("method", ["kl-dp", "xekl-mcl", "kl-dp-unsup"])
def test_cached_and_uncached_runs_agree(method: str) -> None:
    data, test = make_blobs(n_per_class=32, seed=0), make_blobs(n_per_class=10, seed=1)
    config = TransferConfig(method=method, epochs=2, lr=0.05, batch_size=16, seed=3)
    runs = {}
    for cache in (False, True):
        student, teacher = tiny_model(data.class_names, 1), tiny_model(data.class_names, 2, hidden=8)
        runs[cache] = run_transfer(student, teacher, data, test, config, CPU, runtime=Runtime(cache_outputs=cache))
    plain, cached = runs[False], runs[True]
    for key in ("acc", "delta_transf", "knowledge_gain", "knowledge_loss"):
        assert cached.final[key] == pytest.approx(plain.final[key], abs=1e-9)
    assert cached.final["train_loss"] == pytest.approx(plain.final["train_loss"], rel=1e-4)
    a, b = plain.model.net.state_dict(), cached.model.net.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_augmented_runs_compute_targets_on_the_fly() -> None:
    data, test = make_blobs(n_per_class=16, seed=0), make_blobs(n_per_class=4, seed=1)
    config = TransferConfig(method="kl-dp", epochs=1, lr=0.05, batch_size=16, augment=("flip",))
    run_transfer(tiny_model(data.class_names, 1), tiny_model(data.class_names, 2), data, test, config, CPU)
    on_test = set(store_dir().glob("*.safetensors"))
    assert len(on_test) == 2  # only the test-set predictions of the teacher and the student before transfer
    run_transfer(tiny_model(data.class_names, 1), tiny_model(data.class_names, 2), data, test,
                 TransferConfig(method="kl-dp", epochs=1, lr=0.05, batch_size=16), CPU)
    assert len(set(store_dir().glob("*.safetensors")) - on_test) == 2  # + teacher and frozen student, transfer set


def test_second_run_reads_the_store() -> None:
    data = make_blobs(n_per_class=16, seed=0)
    teacher = tiny_model(data.class_names, 2)
    first = CachedOutputs(teacher, data, CPU, labels_allowed=True)
    second = CachedOutputs(teacher, data, CPU, labels_allowed=True)
    assert not first.from_store and second.from_store and second.full_logits
    idx = torch.tensor([5, 0, 17])
    with torch.no_grad():
        expected = teacher.eval()(data.load(idx))
    assert torch.allclose(second.rows(idx, CPU), expected, atol=1e-5)


def test_large_label_space_cache_rows(tmp_path) -> None:
    data = make_blobs(n_per_class=3, num_classes=120, seed=0)
    teacher = tiny_model(data.class_names, 2)
    cache = CachedOutputs(teacher, data, CPU, labels_allowed=False)
    assert not cache.full_logits
    idx = torch.arange(10)
    with torch.no_grad():
        log_p = teacher.eval()(data.load(idx)).log_softmax(-1)
    rows = cache.rows(idx, CPU)
    assert len(rows) == 10 and torch.equal(rows.argmax(-1), log_p.argmax(1)) and rows.true_prob is None
    assert torch.allclose(rows.max_prob, log_p.exp().amax(1), atol=1e-6)
    indices, probs = rows.target()
    assert torch.allclose(probs.sum(1), torch.ones(10), atol=1e-6) and int(indices.max()) < 120
    labelled = CachedOutputs(teacher, data, CPU, labels_allowed=True).rows(idx, CPU)
    assert torch.allclose(labelled.true_prob, log_p.exp().gather(1, data.labels[idx, None]).squeeze(1), atol=1e-6)


def test_mmap_reads_the_stored_tensors(tmp_path) -> None:
    data = make_blobs(n_per_class=8, seed=0)
    preds = get_predictions(tiny_model(data.class_names, 1), data, CPU, root=tmp_path)
    path = tmp_path / f"{preds.key}.safetensors"
    maps = mmap_safetensors(path)
    assert torch.equal(torch.from_numpy(maps["logits"][[3, 1]]), preds.logits[[3, 1]])
    assert torch.equal(torch.from_numpy(np.array(maps["labels"])), preds.labels)
    save_predictions(preds, tmp_path / "copy.safetensors", "blobs")  # a second file maps independently
    assert mmap_safetensors(tmp_path / "copy.safetensors")["logits"].shape == tuple(preds.logits.shape)


def test_loader_workers_give_the_same_run() -> None:
    data, test = make_blobs(n_per_class=16, seed=0), make_blobs(n_per_class=4, seed=1)
    config = TransferConfig(method="kl-dp", epochs=1, lr=0.05, batch_size=16, seed=1)
    runs = [run_transfer(tiny_model(data.class_names, 1), tiny_model(data.class_names, 2), data, test, config, CPU,
                         runtime=Runtime(loader_workers=workers)).model.net.state_dict() for workers in (0, 2)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.slow
def test_compiled_student_trains() -> None:
    """torch.compile (inductor, ~20 s on CPU) runs the same transfer; dropout draws from inductor's own RNG
    stream, so the weights agree only loosely."""
    data, test = make_blobs(n_per_class=32, seed=0), make_blobs(n_per_class=10, seed=1)
    config = TransferConfig(method="kl-dp", epochs=2, lr=0.05, batch_size=16, seed=3)
    plain, compiled = (run_transfer(tiny_model(data.class_names, 1), tiny_model(data.class_names, 2), data, test, config,
                                    CPU, runtime=Runtime(compile=flag)) for flag in (False, True))
    assert compiled.final["status"] == "ok" and abs(compiled.final["acc"] - plain.final["acc"]) < 0.1


def test_evaluating_only_the_last_epoch_gives_the_same_final_metrics() -> None:
    data, test = make_blobs(n_per_class=16, seed=0), make_blobs(n_per_class=6, seed=1)
    config = TransferConfig(method="kl-dp", epochs=3, lr=0.05, batch_size=16, seed=2)
    every, last = (run_transfer(tiny_model(data.class_names, 1), tiny_model(data.class_names, 2), data, test, config,
                                CPU, runtime=Runtime(evaluate_every_epoch=flag)) for flag in (True, False))
    assert [("acc" in row) for row in last.history] == [True, False, False, True]
    for key in ("acc", "delta_transf", "knowledge_gain", "knowledge_loss", "train_loss"):
        assert last.final[key] == every.final[key], key


def test_runs_are_seeded_whatever_the_global_rng() -> None:
    """Dropout masks follow the run's seed, not what ran before in the process."""
    data, test = make_blobs(n_per_class=16, seed=0), make_blobs(n_per_class=4, seed=1)
    config = TransferConfig(method="kl", epochs=1, lr=0.05, batch_size=16, seed=4)
    weights = []
    for noise in (0, 1):
        torch.manual_seed(100 + noise)
        student, teacher = tiny_model(data.class_names, 1), tiny_model(data.class_names, 2)  # dropout 0.1
        torch.rand(noise + 3)  # different global RNG states
        weights.append(run_transfer(student, teacher, data, test, config, CPU).model.net.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
