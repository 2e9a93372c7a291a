"""``gkt zoo build`` and ``gkt zoo list``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from gkt.cli import GROUP_HELP, register_verb
from gkt.core.io import write_csv, write_json
from gkt.reporting.tables import format_table

GROUP_HELP["zoo"] = "build and list the embedded Fashion-MNIST model zoo"


def print_zoo(records: Sequence, run_dir: Path | None = None) -> None:
    """Print the zoo table and write it as ``zoo.csv`` / ``zoo.json`` into ``run_dir``."""
    rows = []
    for r in records:
        conv = r.convergence
        rows.append({"name": r.name, "family": r.family, "params": r.params, "test_acc": round(100 * r.test_acc, 2),
                     "check_delta": "-" if conv is None else f"{100 * conv['delta']:+.2f}",
                     "check": "-" if conv is None else ("ok" if conv["passed"] else "FAIL"),
                     "train_s": r.train_seconds, "weights": r.weights_hash[:12], "recipe": r.recipe})
    print(format_table(rows))
    if rows:
        accs = [row["test_acc"] for row in rows]
        print(f"\n{len(rows)} models, {len({r.family for r in records})} families, "
              f"test accuracy {min(accs):.2f}–{max(accs):.2f}% (span {max(accs) - min(accs):.2f} points, "
              "Fashion-MNIST 10k test split)\ncheck = test-accuracy change after one more epoch of plain "
              f"cross-entropy (SGD, lr {records[0].convergence['lr'] if records[0].convergence else '-'}, no "
              "augmentation); a finished model gains at most +0.30 points\nweights = SHA-256 of the weights (each model "
              "trains on one thread with deterministic algorithms: a rebuild on this machine gives the same hash "
              "whatever --threads; another CPU may give other weights, its floating-point kernels differing)")
    if run_dir is not None and rows:
        write_csv(run_dir / "zoo.csv", rows)
        write_json(run_dir / "zoo.json", [{**asdict(r), "path": str(r.path)} for r in records])


def _configure_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", metavar="NAME", help="build only these zoo models")
    p.add_argument("--no-check", action="store_true", help="skip the convergence check")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (smoke runs)")
    p.add_argument("--fraction", type=float, default=1.0, help="train on this stratified share of train")
    p.add_argument("--workers", type=int, default=1, help="models trained in parallel processes (default: 1)")


@register_verb("zoo build", "train the zoo models that are not cached yet", _configure_build)
def zoo_build(args: argparse.Namespace) -> int:
    from gkt.experiments.zoo import build_zoo, scaled_entries
    from gkt.models.zoo import DEFAULT_ZOO, get_entry

    entries = tuple(get_entry(n) for n in args.only) if args.only else DEFAULT_ZOO
    entries = scaled_entries(entries, args.epochs)
    start = time.perf_counter()
    records = build_zoo(entries, zoo_dir=args.zoo_dir, device=args.torch_device, data_dir=args.data_dir,
                        check=not args.no_check, train_fraction=args.fraction, workers=args.workers)
    print_zoo(records, args.run_dir)
    print(f"\nzoo ready in {time.perf_counter() - start:.0f}s ({sum(not r.cached for r in records)} trained, "
          f"{sum(r.cached for r in records)} cached); run directory: {args.run_dir}")
    return 0


def _configure_check(p: argparse.ArgumentParser) -> None:
    from gkt.experiments.zoo import CHECK_LR

    p.add_argument("--lr", type=float, default=CHECK_LR, help=f"learning rate of the extra epoch (default: {CHECK_LR:g})")


@register_verb("zoo check", "re-run the convergence check of the built zoo models", _configure_check)
def zoo_check(args: argparse.Namespace) -> int:
    from gkt.experiments.zoo import check_zoo

    records = check_zoo(args.zoo_dir, lr=args.lr, device=args.torch_device, data_dir=args.data_dir)
    print_zoo(records, args.run_dir)
    return 0 if all(r.convergence and r.convergence["passed"] for r in records) else 1


@register_verb("zoo list", "print the built zoo models")
def zoo_list(args: argparse.Namespace) -> int:
    from gkt.experiments.zoo import list_zoo
    from gkt.models.zoo import zoo_dir_default

    records = list_zoo(args.zoo_dir)
    if not records:
        print(f"no zoo models built in {args.zoo_dir or zoo_dir_default()}; run `gkt zoo build`")
        return 1
    print_zoo(records, args.run_dir)
    return 0
