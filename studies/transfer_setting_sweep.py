"""Sweep of transfer settings for the demo (README "Studies, reports and the demo").

Runs ``run_transfer`` for pairs × methods × seeds × settings and appends one JSON line per run to
``--out`` (re-runs skip finished lines). Every run is evaluated on the same held-out half of the
official test split ("test-b"), so transfer sets can be compared:

- ``train``: a stratified ``--fraction`` of the 60k train split (the zoo's own training data),
- ``test-a``: the other, disjoint half of the test split (images no zoo model has seen).

Usage: ``uv run python studies/transfer_setting_sweep.py --pairs linear-7px:mlp cnn:linear
--methods kl kl-dp --seeds 0 1 --transfer-sets train test-a --out sweep.jsonl``
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from gkt.core.runtime import seed_everything
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset, train_val_split
from gkt.models import DataInfo, load_model
from gkt.transfer import TransferConfig, run_transfer


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
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")

    test = load_split("fmnist", "test")
    idx_a, idx_b = train_val_split(test.labels, 0.5, seed=0)
    test_a, test_b = test.subset(idx_a, "half-a"), test.subset(idx_b, "half-b")
    train = load_split("fmnist", "train", val_fraction=0)
    info = DataInfo.from_dataset(test)
    models = {}
    done = set()
    if args.out.is_file():
        done = {json.dumps(json.loads(line)["job"], sort_keys=True) for line in args.out.read_text().splitlines()}
    grid = itertools.product(args.pairs, args.transfer_sets, args.methods, args.lr, args.epochs, args.temperature,
                             args.batch_size, args.weight_decay, args.augment, args.seeds)
    for pair, tset, method, lr, epochs, temp, bs, wd, aug, seed in grid:
        job = {"pair": pair, "transfer_set": tset, "method": method, "lr": lr, "epochs": epochs, "temperature": temp,
               "batch_size": bs, "seed": seed, "fraction": args.fraction}
        if wd != 1e-3:
            job["weight_decay"] = wd
        if aug != "none":
            job["augment"] = aug
        if json.dumps(job, sort_keys=True) in done:
            continue
        teacher_name, student_name = pair.split(":")
        for name in (teacher_name, student_name):
            if name not in models:
                models[name] = load_model(f"zoo:{name}", info)
        transfer_set = stratified_subset(train, fraction=args.fraction, seed=seed) if tset == "train" else test_a
        config = TransferConfig(method=method, lr=lr, epochs=epochs, temperature=temp, batch_size=bs,
                                weight_decay=wd, augment=tuple(aug.split("+")) if aug != "none" else (), seed=seed)
        seed_everything(seed)  # dropout (mlp-deep) draws from the global RNG
        out = run_transfer(models[student_name].clone().requires_grad_(True), models[teacher_name].clone(),
                           transfer_set, test_b, config, device)
        keep = ("acc_teacher", "acc_student_before", "acc", "delta_transf", "knowledge_gain", "knowledge_loss",
                "seconds")
        row = {"job": job, **{k: out.final.get(k) for k in keep}, "partition": out.final.get("partition_quality")}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{pair:22s} {tset:7s} {method:6s} lr={lr:g} ep={epochs} T={temp:g} bs={bs} wd={wd:g} aug={aug} seed={seed}: "
              f"Δ {100 * row['delta_transf']:+.2f} gain {100 * row['knowledge_gain']:.2f} "
              f"loss {100 * row['knowledge_loss']:.2f} ({row['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
