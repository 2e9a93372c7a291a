"""Supervised training and batched evaluation, shared by the zoo, KDEP fine-tuning and checks."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.io import write_json
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.engine.loop import evaluate, train_supervised
from gkt.experiments.backends import worker_pool
from gkt.models.checkpoint import checkpoint_paths, load_checkpoint, read_sidecar, save_checkpoint
from gkt.models.classifier import Classifier
from gkt.models.zoo import DEFAULT_ZOO, ZooEntry, entry_path, find_built, is_built, zoo_dir_default

log = logging.getLogger(__name__)


def convergence_check(model: Classifier, train_set: ImageDataset, test_set: ImageDataset, device: torch.device,
                      lr: float = 0.01, seed: int = 0, baseline_acc: float | None = None) -> dict[str, float]:
    """Fine-tune a copy for one epoch with plain cross-entropy (SGD, constant small ``lr``, no augmentation)
    and report the test-accuracy change: a finished model gains (almost) nothing."""
    before = baseline_acc if baseline_acc is not None else evaluate(model, test_set, device)
    probe = model.clone()
    train_supervised(probe, train_set, Recipe(epochs=1, optimizer="sgd", lr=lr, weight_decay=0.0, seed=seed,
                                                   batch_size=min(128, len(train_set))),
                     device, desc="convergence check", constant_lr=True)
    after = evaluate(probe, test_set, device)
    return {"lr": lr, "acc_before": before, "acc_after": after, "delta": after - before}


CONVERGENCE_TOLERANCE = 0.003  # a finished model gains at most 0.3 points from one more epoch


# The convergence check's learning rate: larger than the transfer's default (gkt.transfer.DEFAULT_LR), so a model
# that gains nothing from one more plain epoch at this step size would not gain from mere training during a transfer.
CHECK_LR = 1e-3


ZOO_THREADS = 1  # every zoo model trains on this many intra-op threads: its weights never depend on the machine's


@dataclass
class ZooRecord:
    name: str
    family: str
    params: int
    test_acc: float
    recipe: str
    train_seconds: float
    convergence: dict[str, float] | None
    path: Path
    cached: bool
    weights_hash: str = ""


def _record(entry_name: str, family: str, path: Path, cached: bool) -> ZooRecord:
    meta = read_sidecar(path)
    prov = meta["provenance"]
    return ZooRecord(entry_name, family, prov["params"], prov["test_acc"], prov["recipe_text"],
                     prov["train_seconds"], prov.get("convergence"), checkpoint_paths(path)[0], cached,
                     meta.get("weights_sha256", ""))


@contextmanager
def deterministic_training(threads: int = ZOO_THREADS) -> Iterator[None]:
    """A fixed intra-op thread count and deterministic algorithms for the block (restored afterwards), so
    that a model's weights do not depend on the caller's ``--threads`` or the machine's core count."""
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (GPU builds)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def build_zoo(entries: tuple[ZooEntry, ...] = DEFAULT_ZOO, *, zoo_dir: str | Path | None = None,
              device: torch.device | None = None, data_dir: str | None = None, check: bool = True,
              train_fraction: float = 1.0, train_set: ImageDataset | None = None,
              test_set: ImageDataset | None = None, workers: int = 1) -> list[ZooRecord]:
    """Train every entry that is not cached yet (cache key = recipe + architecture + preprocessing) and
    save it as a gkt checkpoint with its test accuracy, weights hash and convergence check. Each model
    trains on :data:`ZOO_THREADS` threads with deterministic algorithms; with ``workers > 1`` the missing
    models train in that many processes at once (the same weights as one after another)."""
    device = device or torch.device("cpu")
    zoo_dir = Path(zoo_dir or zoo_dir_default())
    todo = [e for e in entries if not _is_sound(entry_path(e, zoo_dir, train_fraction), e.name)]
    job = functools.partial(_build_entry, zoo_dir=zoo_dir, device=device, data_dir=data_dir, check=check,
                            train_fraction=train_fraction, train_set=train_set, test_set=test_set)
    if workers > 1 and len(todo) > 1:
        # spawn: a forked child of a process that already ran OpenMP threads can hang. The catalogue lists
        # cheap models first: submitting from its end starts the longest builds first (a shorter makespan).
        with worker_pool(min(workers, len(todo)), multiprocessing.get_context("spawn"), ZOO_THREADS) as pool:
            list(pool.map(job, todo[::-1]))
    else:
        for entry in todo:
            job(entry)
    return [_record(e.name, e.family, entry_path(e, zoo_dir, train_fraction), cached=e not in todo) for e in entries]


def _is_sound(path: Path, name: str) -> bool:
    """Built, with weights that match their recorded hash (a damaged build is trained again)."""
    if not is_built(path):
        return False
    try:
        load_checkpoint(path)
        return True
    except GktError as exc:
        log.warning("zoo %s: the cached build is damaged (%s); training it again", name, exc)
        return False


def _build_entry(entry: ZooEntry, *, zoo_dir: Path, device: torch.device, data_dir: str | None, check: bool,
                 train_fraction: float, train_set: ImageDataset | None, test_set: ImageDataset | None) -> None:
    """Train, evaluate, check and save one zoo model."""
    if train_set is None:
        full = load_split("fmnist", "train", data_dir=data_dir, val_fraction=0)
        train_set = stratified_subset(full, fraction=train_fraction, seed=0) if train_fraction < 1 else full
    if test_set is None:
        test_set = load_split("fmnist", "test", data_dir=data_dir)
    with deterministic_training():
        torch.manual_seed(entry.recipe.seed)
        model = Classifier.create(entry.arch_spec(len(train_set.class_names)), entry.preprocess(),
                                  train_set.class_names, name=f"zoo:{entry.name}")
        start = time.perf_counter()
        train_supervised(model, train_set, entry.recipe, device, desc=f"zoo {entry.name}")
        seconds = time.perf_counter() - start
        acc = evaluate(model, test_set, device)
        model.provenance = {"zoo": entry.name, "family": entry.family, "recipe": entry.recipe.to_dict(),
                            "recipe_text": entry.recipe.describe(), "train_fraction": train_fraction,
                            "train_data": train_set.name, "test_acc": acc, "train_seconds": round(seconds, 1),
                            "params": model.num_parameters(), "train_threads": ZOO_THREADS}
        if check:
            model.provenance["convergence"] = _check(model, train_set, test_set, device, acc)
    save_checkpoint(model.cpu(), entry_path(entry, zoo_dir, train_fraction), overwrite=True)
    log.info("zoo %s: test acc %.4f in %.0fs", entry.name, acc, seconds)


def _check(model: Classifier, train_set: ImageDataset, test_set: ImageDataset, device: torch.device,
           acc: float, lr: float = CHECK_LR) -> dict[str, Any]:
    result: dict[str, Any] = convergence_check(model, train_set, test_set, device, lr=lr, baseline_acc=acc)
    result["passed"] = result["delta"] <= CONVERGENCE_TOLERANCE
    return result


def check_zoo(zoo_dir: str | Path | None = None, entries: tuple[ZooEntry, ...] = DEFAULT_ZOO, lr: float = CHECK_LR,
              device: torch.device | None = None, data_dir: str | None = None) -> list[ZooRecord]:
    """(Re-)run the convergence check of every built model at ``lr``; the result is stored in its sidecar."""
    device = device or torch.device("cpu")
    train_set = load_split("fmnist", "train", data_dir=data_dir, val_fraction=0)
    test_set = load_split("fmnist", "test", data_dir=data_dir)
    for record in list_zoo(zoo_dir, entries):
        model = load_checkpoint(record.path)
        result = _check(model, train_set, test_set, device, record.test_acc, lr)
        _, sidecar = checkpoint_paths(record.path)
        meta = read_sidecar(record.path)
        meta["provenance"]["convergence"] = result
        write_json(sidecar, meta)
        log.info("zoo %s: one more epoch at lr %g changes test accuracy by %+.2f points", record.name, lr,
                 100 * result["delta"])
    return list_zoo(zoo_dir, entries)


def scaled_entries(entries: tuple[ZooEntry, ...], epochs: int | None) -> tuple[ZooEntry, ...]:
    """The same recipes with a different epoch budget (for quick tests and smoke runs)."""
    if epochs is None:
        return entries
    return tuple(replace(e, recipe=replace(e.recipe, epochs=epochs)) for e in entries)


def list_zoo(zoo_dir: str | Path | None = None, entries: tuple[ZooEntry, ...] = DEFAULT_ZOO,
             train_fraction: float = 1.0) -> list[ZooRecord]:
    """The built models among ``entries``, in zoo order: each the current recipe's build, else the newest
    build of that name (as ``zoo:NAME`` loads it, see :func:`gkt.models.zoo.find_built`)."""
    records = []
    for entry in entries:
        path = find_built(entry.name, zoo_dir, entry_path(entry, zoo_dir, train_fraction))
        if path is None:
            continue
        try:
            records.append(_record(entry.name, entry.family, path, cached=True))
        except (GktError, KeyError, TypeError) as exc:  # one damaged build does not hide the others
            log.warning("zoo:%s at %s is damaged (%s): left out; rebuild it with gkt zoo build --only %s",
                        entry.name, path, exc, entry.name)
    return records


def expand_zoo(specs: Sequence[str], zoo_dir: str | Path | None = None, option: str = "--models") -> list[str]:
    """``specs`` with ``zoo`` replaced by every built zoo model (``zoo:NAME``, in zoo order); ``option`` names
    where the specs came from in the error when no zoo model is built."""
    out: list[str] = []
    for spec in specs:
        if spec != "zoo":
            out.append(spec)
            continue
        built = [f"zoo:{r.name}" for r in list_zoo(zoo_dir)]
        if not built:
            raise GktError(f"`{option} zoo` found no built zoo models in {zoo_dir or zoo_dir_default()}; "
                           "run `gkt zoo build` first")
        out += built
    return out
