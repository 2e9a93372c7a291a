from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_blobs

from gkt.core.config import Recipe
from gkt.engine.loop import evaluate, train_supervised
from gkt.experiments.zoo import build_zoo, convergence_check, list_zoo, scaled_entries
from gkt.models import load_model
from gkt.models.zoo import DEFAULT_ZOO, ZooEntry


def test_default_zoo_is_diverse() -> None:
    assert len(DEFAULT_ZOO) >= 10
    assert len({e.family for e in DEFAULT_ZOO}) >= 4
    assert {"mlp", "cnn", "resnet", "vit", "mixer"} <= {e.family for e in DEFAULT_ZOO}
    assert len({e.name for e in DEFAULT_ZOO}) == len(DEFAULT_ZOO)
    assert len({e.recipe.seed for e in DEFAULT_ZOO}) == len(DEFAULT_ZOO)
    assert len({e.recipe.optimizer for e in DEFAULT_ZOO}) >= 2
    assert len({e.recipe.augment for e in DEFAULT_ZOO}) >= 3
    assert len({e.input_size for e in DEFAULT_ZOO}) >= 2 and len({e.channels for e in DEFAULT_ZOO}) >= 2


TINY = (
    ZooEntry("lin", "linear", "linear", Recipe(3, "sgd", 0.1, 0.0, 16)),
    ZooEntry("cnn", "cnn", "cnn", Recipe(6, "adamw", 1e-2, 0.0, 16, augment=("crop",)), {"channels": [4, 8]},
             input_size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3),
)


def test_build_caches_and_loads(tmp_path: Path) -> None:
    train, test = make_blobs(30, seed=0), make_blobs(10, seed=1)
    records = build_zoo(TINY, zoo_dir=tmp_path, train_set=train, test_set=test)
    assert [r.cached for r in records] == [False, False]
    assert all(r.test_acc > 0.5 for r in records), [r.test_acc for r in records]
    assert all(r.convergence is not None and "delta" in r.convergence for r in records)
    again = build_zoo(TINY, zoo_dir=tmp_path, train_set=train, test_set=test)
    assert [r.cached for r in again] == [True, True]
    assert [r.test_acc for r in again] == [r.test_acc for r in records]
    assert [r.name for r in list_zoo(tmp_path, TINY)] == ["lin", "cnn"]
    sidecar = records[0].path.with_suffix(".json")
    kept = sidecar.read_bytes()
    sidecar.write_text("{garbage")  # one damaged build is left out of the listing, not an error for all
    assert [r.name for r in list_zoo(tmp_path, TINY)] == ["cnn"]
    sidecar.write_bytes(kept)
    model = load_model("zoo:cnn", zoo_dir=tmp_path)
    assert model.preprocess.channels == 3 and evaluate(model, test, torch.device("cpu")) == pytest.approx(
        records[1].test_acc)
    # a changed recipe is a different model: not taken from the cache
    changed = scaled_entries(TINY[:1], epochs=1)
    assert not build_zoo(changed, zoo_dir=tmp_path, train_set=train, test_set=test, check=False)[0].cached


def test_training_is_seeded() -> None:
    data = make_blobs(20)
    accs = []
    for _ in range(2):
        torch.manual_seed(0)
        entry = TINY[1]
        from gkt.models import Classifier

        model = Classifier.create(entry.arch_spec(4), entry.preprocess(), data.class_names)
        train_supervised(model, data, entry.recipe, torch.device("cpu"))
        accs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*accs))


def test_convergence_check_flags_undertrained_model() -> None:
    train, test = make_blobs(60, seed=0, noise=60), make_blobs(30, seed=1, noise=60)
    from gkt.models import Classifier

    entry = TINY[0]
    model = Classifier.create(entry.arch_spec(4), entry.preprocess(), train.class_names)
    fresh = convergence_check(model, train, test, torch.device("cpu"), lr=0.05)
    assert fresh["delta"] > 0.1  # an untrained model gains a lot from one epoch
    train_supervised(model, train, Recipe(20, "sgd", 0.05, 0.0, 16), torch.device("cpu"))
    done = convergence_check(model, train, test, torch.device("cpu"), lr=0.05)
    assert done["delta"] < fresh["delta"]


def test_zoo_lookup_does_not_confuse_prefixes(tmp_path: Path) -> None:
    """Regression: zoo:mlp must never resolve to a build of mlp-14px."""
    from gkt.core.errors import GktError
    from gkt.models import save_checkpoint

    entry = ZooEntry("mlp-14px", "mlp", "linear", Recipe(1), input_size=14)
    from gkt.models import Classifier

    model = Classifier.create(entry.arch_spec(4), entry.preprocess(), [f"c{i}" for i in range(4)])
    save_checkpoint(model, tmp_path / f"mlp-14px-{'0' * 16}")
    assert load_model("zoo:mlp-14px", zoo_dir=tmp_path).preprocess.input_size == 14
    with pytest.raises(GktError, match="not built"):
        load_model("zoo:mlp", zoo_dir=tmp_path)


def test_weights_do_not_depend_on_threads_or_parallel_builds(tmp_path: Path) -> None:
    """A zoo model trains on a fixed thread count with deterministic algorithms: built under 1 torch thread
    one after another, or under 2 threads in two processes, its weights hash is the same (and is listed)."""
    train, test = make_blobs(30, seed=0), make_blobs(10, seed=1)
    entries = (*TINY, ZooEntry("mlp", "mlp", "mlp", Recipe(3, "adamw", 1e-2, 0.0, 16), {"hidden": [64]}))
    before = torch.get_num_threads()
    hashes = []
    try:
        for threads, workers in ((1, 1), (2, 2)):
            torch.set_num_threads(threads)
            records = build_zoo(entries, zoo_dir=tmp_path / f"{threads}-{workers}", train_set=train, test_set=test,
                                check=False, workers=workers)
            assert torch.get_num_threads() == threads  # restored after the build
            hashes.append([r.weights_hash for r in records])
    finally:
        torch.set_num_threads(before)
    assert all(len(h) == 16 for h in hashes[0]) and len(set(hashes[0])) == len(entries)
    assert hashes[0] == hashes[1]
    assert [r.weights_hash for r in list_zoo(tmp_path / "1-1", entries)] == hashes[0]
