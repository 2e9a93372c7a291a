"""Does KL+DP gain when the zoo's models were trained on different data? (README "The demo's acceptance")

Trains the demo's zoo recipes again, each model on its own seeded stratified ``--shard`` of the 60k train
split (``--shard 1`` uses the embedded zoo as built), then runs every ordered pair × ``--methods`` ×
``--seeds`` with the transfer defaults (10% of train as transfer set, evaluated on the test split) as a grid
(:func:`gkt.experiments.grid.run_study`) into the results store ``--out`` (re-runs skip finished jobs;
``--workers`` runs them in parallel). ``--self-control`` distils each student from its own copy instead:
what fine-tuning alone (dropout, BatchNorm statistics) does to it.

Usage: ``uv run python studies/data_diverse_zoo.py --shard 0.5 --seeds 0 1 --out shard.sqlite``, then
``uv run python studies/data_diverse_zoo.py --summary shard.sqlite``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
from pathlib import Path
from typing import Any

import torch

from gkt.core.io import cache_home
from gkt.core.runtime import seed_everything
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.experiments.grid import LocalBackend, ResultsStore, run_study
from gkt.experiments.zoo import ZooRecord, build_zoo
from gkt.models import Classifier
from gkt.models.checkpoint import load_checkpoint
from gkt.models.zoo import get_entry, load_zoo_model
from gkt.reporting.study_tables import pair_means, success_table
from gkt.transfer import TransferConfig, run_transfer

DEMO_ZOO = ("linear-7px", "linear", "mlp-14px", "mlp", "mlp-deep", "cnn")
KEEP = ("acc_teacher", "acc_student_before", "acc", "delta_transf", "knowledge_gain", "knowledge_loss")


@functools.lru_cache(maxsize=2)
def _split(split: str) -> ImageDataset:
    return load_split("fmnist", split, val_fraction=0) if split == "train" else load_split("fmnist", split)


def shard_record(name: str, shard: float, shard_seed: int) -> ZooRecord:
    """The zoo recipe ``name`` trained on the stratified ``shard`` of train drawn with ``shard_seed`` (built
    once, cached under $GKT_HOME/studies)."""
    zoo_dir = cache_home() / "studies" / f"zoo-shard{shard:g}-seed{shard_seed}" / name  # the zoo key ignores data
    data = stratified_subset(_split("train"), fraction=shard, seed=shard_seed)
    return build_zoo((get_entry(name),), zoo_dir=zoo_dir, train_set=data, test_set=_split("test"))[0]


@functools.lru_cache(maxsize=None)
def shard_model(name: str, shard: float, shard_seed: int) -> Classifier:
    """:func:`shard_record`'s model; the embedded zoo model for ``shard >= 1``."""
    return load_zoo_model(name) if shard >= 1 else load_checkpoint(shard_record(name, shard, shard_seed).path)


def transfer_run(job: dict[str, Any]) -> dict[str, Any]:
    """One grid job: the pair's transfer on a seeded 10% of train, evaluated on the test split."""
    torch.set_num_threads(1)
    teacher, student = job["pair"].split(":")
    seeds = job.get("shard_seeds", [0, 0])
    config = TransferConfig(method=job["method"], seed=job["seed"], student_mode=job.get("student_mode", "train"))
    seed_everything(job["seed"])
    out = run_transfer(shard_model(student, job["shard"], seeds[1]).clone().requires_grad_(True),
                       shard_model(teacher, job["shard"], seeds[0]).clone(),
                       stratified_subset(_split("train"), fraction=0.1, seed=job["seed"]), _split("test"), config,
                       torch.device("cpu"))
    return {**{k: out.final[k] for k in KEEP}, "partition": out.final.get("partition_quality")}


def summary(path: Path) -> None:
    """The study success table (seed-mean Δtransf > 0) per method and student mode, with the best pair and
    the positive pairs per student."""
    records = []
    for row in ResultsStore(path).rows():
        job = row.config
        teacher, student = job["pair"].split(":")
        records.append({"student": student, "teacher": teacher, "seed": job["seed"],
                        "method": f"{job['method']} ({job.get('student_mode', 'train')})",
                        **{k: row.metrics[k] for k in ("delta_transf", "knowledge_gain", "knowledge_loss")}})
    pairs = pair_means(records)
    for row in success_table(pairs):
        ps = [p for p in pairs if p["method"] == row["method"]]
        per_student = collections.defaultdict(list)
        for p in ps:
            per_student[p["student"]].append(p["delta_transf"] > 0)
        print(f"{row['method']:20s} seeds/pair {sorted({p['seeds'] for p in ps})} pairs {row['pairs']:2d}: success "
              f"{row['success_%']:5.1f}%, mean Δtransf {row['mean_delta_transf_pp']:+.3f} pp, min "
              f"{row['min_delta_transf_pp']:+.2f}, max {100 * max(p['delta_transf'] for p in ps):+.2f}; positive per "
              "student " + ", ".join(f"{s} {sum(v)}/{len(v)}" for s, v in per_student.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEMO_ZOO))
    p.add_argument("--shard", type=float, default=0.5, help="share of train each zoo model is trained on")
    p.add_argument("--methods", nargs="+", default=["kl", "kl-dp", "kl-dp-unsup"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--student-mode", default="train", choices=["train", "eval"])
    p.add_argument("--self-control", action="store_true", help="teacher = the student itself")
    p.add_argument("--workers", type=int, default=1, help="parallel processes, one torch thread each")
    p.add_argument("--out", type=Path, help="results store (SQLite)")
    p.add_argument("--summary", type=Path, metavar="STORE", help="print the success table of a results store")
    args = p.parse_args()
    if args.summary:
        return summary(args.summary)
    torch.set_num_threads(1)
    shard_seeds = {name: 100 + i for i, name in enumerate(args.models)}
    for name in args.models if args.shard < 1 else ():  # built here once, before the workers load them
        record = shard_record(name, args.shard, shard_seeds[name])
        print(f"{name}: {100 * record.test_acc:.2f}% test accuracy, convergence {record.convergence}", flush=True)
    pairs = ([(s, s) for s in args.models] if args.self_control
             else [(t, s) for s, t in itertools.product(args.models, args.models) if s != t])
    jobs = []
    for (teacher, student), method, seed in itertools.product(pairs, args.methods, args.seeds):
        job = {"pair": f"{teacher}:{student}", "method": method, "seed": seed, "shard": args.shard}
        if args.shard < 1:
            job["shard_seeds"] = [shard_seeds[teacher], shard_seeds[student]]
        if args.student_mode != "train":
            job["student_mode"] = args.student_mode
        jobs.append(job)

    def report(job: dict[str, Any], row: dict[str, Any], status: str) -> None:
        teacher, student = job["pair"].split(":")
        if status != "done":
            print(f"{teacher:>10s} -> {student:10s} {job['method']:12s} seed {job['seed']}: FAILED {row['error']}")
            return
        print(f"{teacher:>10s} -> {student:10s} {job['method']:12s} seed {job['seed']}: Δ "
              f"{100 * row['delta_transf']:+.2f} gain {100 * row['knowledge_gain']:.2f} loss "
              f"{100 * row['knowledge_loss']:.2f}", flush=True)

    counts = run_study(transfer_run, jobs, ResultsStore(args.out), LocalBackend(args.workers, threads=1),
                       desc="data-diverse zoo", on_result=report)
    print(counts.describe("transfer runs"))


if __name__ == "__main__":
    main()
