"""Scaling of a transfer study with the local backend: 1 worker against N workers, same jobs.

    uv run python benchmarks/bench_study_scaling.py [--models linear mlp cnn] [--workers 2] [--epochs 1]

Zoo architectures, freshly initialised and saved as ``file:`` checkpoints, transfer into each other
(all ordered pairs, KL+DP) on a stratified share of Fashion-MNIST; each worker uses one torch thread.
Each backend writes its own results store; the script prints both wall times, the speed-up and the
parallel efficiency, and checks that the two results tables agree.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from gkt.data.fmnist import FASHION_MNIST_CLASSES
from gkt.experiments.grid import LocalBackend, ResultsStore, expand_grid, run_study
from gkt.experiments.transfer_job import transfer_job
from gkt.models import Classifier, save_checkpoint
from gkt.models.zoo import get_entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["linear", "mlp", "cnn"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--fraction", type=float, default=0.05)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gkt-bench-study-"))
    os.environ["GKT_HOME"] = str(root / "home")  # the random models' outputs stay out of the user's cache
    specs = []
    for seed, name in enumerate(args.models):
        entry = get_entry(name)
        torch.manual_seed(seed)
        model = Classifier.create(entry.arch_spec(), entry.preprocess(), FASHION_MNIST_CLASSES, name=name)
        specs.append(f"file:{save_checkpoint(model, root / name).with_suffix('')}")
    base = {"method": "kl-dp", "epochs": args.epochs, "fraction": args.fraction, "seed": 0, "device": "cpu"}
    jobs = expand_grid(base, {"student": specs, "teacher": specs}, skip=lambda j: j["student"] == j["teacher"])
    seconds, tables = {}, {}
    for workers in (1, args.workers):
        store = ResultsStore(root / f"results-{workers}.sqlite")
        start = time.perf_counter()
        counts = run_study(transfer_job, jobs, store, LocalBackend(workers=workers, threads=1), desc=f"{workers} worker(s)")
        seconds[workers] = time.perf_counter() - start
        tables[workers] = {r.key: round(r.metrics["delta_transf"], 6) for r in store.rows()}
        assert counts.ok, counts
    speedup = seconds[1] / seconds[args.workers]
    print(f"{len(jobs)} transfer jobs ({', '.join(args.models)}; kl-dp, {args.epochs} epoch(s), {args.fraction:.0%} "
          f"of the train split), 1 torch thread per worker, {os.cpu_count()} CPU cores")
    print(f"  1 worker : {seconds[1]:7.1f} s")
    print(f"  {args.workers} workers: {seconds[args.workers]:7.1f} s -> speed-up {speedup:.2f}x, parallel efficiency "
          f"{speedup / args.workers:.0%}; results tables identical: {tables[1] == tables[args.workers]}")


if __name__ == "__main__":
    main()
