"""Does KL+DP gain when the zoo's models were trained on different data? (README "The demo's acceptance")

Trains the demo's zoo recipes again, each model on its own seeded stratified ``--shard`` of the 60k train
split (``--shard 1`` uses the embedded zoo as built), then runs every ordered pair × ``--methods`` ×
``--seeds`` with the transfer defaults (10% of train as transfer set, evaluated on the test split) and
appends one JSON line per run to ``--out`` (re-runs skip finished lines). ``--self-control`` distils each
student from its own copy instead: what fine-tuning alone (dropout, BatchNorm statistics) does to it.

Usage: ``uv run python studies/data_diverse_zoo.py --shard 0.5 --seeds 0 1 --out shard.jsonl``, then
``uv run python studies/data_diverse_zoo.py --summary shard.jsonl``.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
from pathlib import Path

import torch

from gkt.core.io import cache_home
from gkt.core.runtime import seed_everything
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.experiments.zoo import build_zoo
from gkt.models import Classifier
from gkt.models.checkpoint import load_checkpoint
from gkt.models.zoo import get_entry, load_zoo_model
from gkt.reporting.study_tables import pair_means, success_table
from gkt.transfer import TransferConfig, run_transfer

DEMO_ZOO = ("linear-7px", "linear", "mlp-14px", "mlp", "mlp-deep", "cnn")


def zoo_models(names: list[str], shard: float) -> dict[str, Classifier]:
    """The zoo recipes trained on shard ``i`` (seed 100 + i) of train each; the embedded zoo for shard 1."""
    if shard >= 1:
        return {name: load_zoo_model(name) for name in names}
    train, test = load_split("fmnist", "train", val_fraction=0), load_split("fmnist", "test")
    models = {}
    for i, name in enumerate(names):
        data = stratified_subset(train, fraction=shard, seed=100 + i)
        zoo_dir = cache_home() / "studies" / f"zoo-shard{shard:g}" / name  # the zoo cache key ignores the data
        record = build_zoo((get_entry(name),), zoo_dir=zoo_dir, train_set=data, test_set=test)[0]
        print(f"{name}: {100 * record.test_acc:.2f}% test accuracy, convergence {record.convergence}", flush=True)
        models[name] = load_checkpoint(record.path)
    return models


def summary(path: Path) -> None:
    """The study success table (seed-mean Δtransf > 0) per method and student mode, with the best pair and
    the positive pairs per student."""
    records = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        job = row["job"]
        teacher, student = job["pair"].split(":")
        records.append({"student": student, "teacher": teacher, "seed": job["seed"],
                        "method": f"{job['method']} ({job.get('student_mode', 'train')})",
                        **{k: row[k] for k in ("delta_transf", "knowledge_gain", "knowledge_loss")}})
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
    p.add_argument("--out", type=Path)
    p.add_argument("--summary", type=Path, metavar="JSONL", help="print the success table of a results file")
    args = p.parse_args()
    if args.summary:
        return summary(args.summary)
    torch.set_num_threads(1)
    models = zoo_models(args.models, args.shard)
    train, test = load_split("fmnist", "train", val_fraction=0), load_split("fmnist", "test")
    done = set()
    if args.out.is_file():
        done = {json.dumps(json.loads(line)["job"], sort_keys=True) for line in args.out.read_text().splitlines()}
    pairs = ([(s, s) for s in args.models] if args.self_control
             else [(t, s) for s, t in itertools.product(args.models, args.models) if s != t])
    for (teacher, student), method, seed in itertools.product(pairs, args.methods, args.seeds):
        job = {"pair": f"{teacher}:{student}", "method": method, "seed": seed, "shard": args.shard}
        if args.student_mode != "train":
            job["student_mode"] = args.student_mode
        if json.dumps(job, sort_keys=True) in done:
            continue
        config = TransferConfig(method=method, seed=seed, student_mode=args.student_mode)
        seed_everything(seed)
        out = run_transfer(models[student].clone().requires_grad_(True), models[teacher].clone(),
                           stratified_subset(train, fraction=0.1, seed=seed), test, config, torch.device("cpu"))
        keep = ("acc_teacher", "acc_student_before", "acc", "delta_transf", "knowledge_gain", "knowledge_loss")
        row = {"job": job, **{k: out.final[k] for k in keep}, "partition": out.final.get("partition_quality")}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{teacher:>10s} -> {student:10s} {method:12s} seed {seed}: Δ {100 * row['delta_transf']:+.2f} "
              f"gain {100 * row['knowledge_gain']:.2f} loss {100 * row['knowledge_loss']:.2f}", flush=True)


if __name__ == "__main__":
    main()
