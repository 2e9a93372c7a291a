"""Sweep of transfer settings for the demo (README "Studies, reports and the demo").

Runs ``run_transfer`` for pairs × methods × seeds × settings as a grid (:func:`gkt.experiments.grid.run_study`)
into the results store ``--out`` (re-runs skip finished jobs; ``--workers`` runs them in parallel). Every run
is evaluated on the same held-out half of the official test split ("test-b"), so transfer sets can be compared:

- ``train``: a stratified ``--fraction`` of the 60k train split (the zoo's own training data),
- ``test-a``: the other, disjoint half of the test split (images no zoo model has seen).

Usage: ``uv run python studies/transfer_setting_sweep.py --pairs linear-7px:mlp cnn:linear
--methods kl kl-dp --seeds 0 1 --transfer-sets train test-a --out sweep.sqlite``
"""

from __future__ import annotations

import argparse
import functools
import itertools
from pathlib import Path
from typing import Any

import torch

from gkt.core.runtime import seed_everything
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset, train_val_split
from gkt.experiments.grid import LocalBackend, ResultsStore, run_study
from gkt.models import Classifier, DataInfo, load_model
from gkt.transfer import TransferConfig, run_transfer

KEEP = ("acc_teacher", "acc_student_before", "acc", "delta_transf", "knowledge_gain", "knowledge_loss", "seconds")


@functools.lru_cache(maxsize=1)
def _data() -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """The train split and the two disjoint halves of the test split (a: transfer set, b: evaluation)."""
    test = load_split("fmnist", "test")
    idx_a, idx_b = train_val_split(test.labels, 0.5, seed=0)
    return load_split("fmnist", "train", val_fraction=0), test.subset(idx_a, "half-a"), test.subset(idx_b, "half-b")


@functools.lru_cache(maxsize=None)
def _model(name: str) -> Classifier:
    return load_model(f"zoo:{name}", DataInfo.from_dataset(load_split("fmnist", "test")))


def sweep_run(job: dict[str, Any]) -> dict[str, Any]:
    """One grid job: the pair's transfer with the job's settings, evaluated on test-b."""
    torch.set_num_threads(1)
    train, test_a, test_b = _data()
    teacher_name, student_name = job["pair"].split(":")
    aug = job.get("augment", "none")
    transfer_set = (stratified_subset(train, fraction=job["fraction"], seed=job["seed"])
                    if job["transfer_set"] == "train" else test_a)
    config = TransferConfig(method=job["method"], lr=job["lr"], epochs=job["epochs"], temperature=job["temperature"],
                            batch_size=job["batch_size"], weight_decay=job.get("weight_decay", 1e-3),
                            augment=tuple(aug.split("+")) if aug != "none" else (), seed=job["seed"])
    seed_everything(job["seed"])  # dropout (mlp-deep) draws from the global RNG
    out = run_transfer(_model(student_name).clone().requires_grad_(True), _model(teacher_name).clone(),
                       transfer_set, test_b, config, torch.device("cpu"))
    return {**{k: out.final.get(k) for k in KEEP}, "partition": out.final.get("partition_quality")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", required=True, help="TEACHER:STUDENT zoo names")
    p.add_argument("--methods", nargs="+", default=["kl", "kl-dp"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--transfer-sets", nargs="+", default=["train", "test-a"])
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--lr", nargs="+", type=float, default=[3e-4])
    p.add_argument("--epochs", nargs="+", type=int, default=[5])
    p.add_argument("--temperature", nargs="+", type=float, default=[1.0])
    p.add_argument("--batch-size", nargs="+", type=int, default=[128])
    p.add_argument("--weight-decay", nargs="+", type=float, default=[1e-3])
    p.add_argument("--augment", nargs="+", default=["none"], help="augmentation sets, e.g. none flip+crop")
    p.add_argument("--workers", type=int, default=1, help="parallel processes, one torch thread each")
    p.add_argument("--out", type=Path, required=True, help="results store (SQLite)")
    args = p.parse_args()
    torch.set_num_threads(1)
    jobs = []
    grid = itertools.product(args.pairs, args.transfer_sets, args.methods, args.lr, args.epochs, args.temperature,
                             args.batch_size, args.weight_decay, args.augment, args.seeds)
    for pair, tset, method, lr, epochs, temp, bs, wd, aug, seed in grid:
        job = {"pair": pair, "transfer_set": tset, "method": method, "lr": lr, "epochs": epochs, "temperature": temp,
               "batch_size": bs, "seed": seed, "fraction": args.fraction}
        if wd != 1e-3:
            job["weight_decay"] = wd
        if aug != "none":
            job["augment"] = aug
        jobs.append(job)

    def report(job: dict[str, Any], row: dict[str, Any], status: str) -> None:
        settings = (f"{job['pair']:22s} {job['transfer_set']:7s} {job['method']:6s} lr={job['lr']:g} "
                    f"ep={job['epochs']} T={job['temperature']:g} bs={job['batch_size']} "
                    f"wd={job.get('weight_decay', 1e-3):g} aug={job.get('augment', 'none')} seed={job['seed']}")
        if status != "done":
            print(f"{settings}: FAILED {row['error']}", flush=True)
            return
        print(f"{settings}: Δ {100 * row['delta_transf']:+.2f} gain {100 * row['knowledge_gain']:.2f} "
              f"loss {100 * row['knowledge_loss']:.2f} ({row['seconds']:.0f}s)", flush=True)

    counts = run_study(sweep_run, jobs, ResultsStore(args.out), LocalBackend(args.workers, threads=1),
                       desc="transfer settings", on_result=report)
    print(counts.describe("transfer runs"))


if __name__ == "__main__":
    main()
