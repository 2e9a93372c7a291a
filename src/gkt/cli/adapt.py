"""``gkt adapt``: new classifier heads for a target dataset (linear probe or full fine-tuning), then
optionally transfers between the adapted models on it (paper appendix B.4, Fig. 9)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from gkt.cli import register_verb
from gkt.cli.config import add_config_option
from gkt.core.errors import GktError
from gkt.core.io import write_json
from gkt.reporting.tables import format_table

DEFAULT_METHODS = ("kl", "xekl-mcl", "kl-dp")


def add_transfer_options(p: argparse.ArgumentParser, epochs: int | None, fraction: float) -> None:
    """Options of the transfer grid shared by ``gkt adapt --transfer`` and ``gkt crossdomain``."""
    from gkt.transfer import TransferConfig

    d = TransferConfig()
    g = p.add_argument_group("transfer study")
    g.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"transfer methods (default: {' '.join(DEFAULT_METHODS)})")
    g.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the transfer runs (default: 0)")
    g.add_argument("--epochs", type=int, default=epochs,
                   help=f"transfer epochs (default: {epochs or f'the transfer default, {d.epochs}'})")
    g.add_argument("--lr", type=float, default=None, help=f"transfer learning rate (default: {d.lr:g})")
    g.add_argument("--batch-size", type=int, default=None, help=f"transfer batch size (default: {d.batch_size})")
    g.add_argument("--fraction", type=float, default=fraction,
                   help=f"stratified share of the train split used as transfer set (default: {fraction:g})")
    g.add_argument("--method-arg", action="append", default=[], metavar="METHOD:K=V",
                   help="a method hyperparameter (e.g. xekl-mcl:tau=0.99), repeatable")
    g.add_argument("--workers", type=int, default=1, help="parallel transfer processes (default: 1)")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="use RUN_DIR's results store: its finished jobs are not run again (e.g. to add seeds)")
    g.add_argument("--retry-failed", action="store_true", help="with --resume: run the jobs that failed before again")


def store_path(args: argparse.Namespace) -> Path | None:
    """The results store of ``--resume RUN_DIR`` (None: a new one in this run's directory)."""
    if not args.resume:
        if args.retry_failed:
            raise GktError("--retry-failed reruns the failed jobs of an earlier run: give it with --resume RUN_DIR")
        return None
    path = Path(args.resume) / "results.sqlite"
    if not path.is_file():
        raise GktError(f"{args.resume}: no results.sqlite to resume")
    return path


def study_plan(args: argparse.Namespace, students: list[str], teachers: list[str], data: str) -> Any:
    from gkt.experiments.adapt_study import StudyPlan
    from gkt.experiments.study import parse_method_args

    return StudyPlan(students, teachers, args.methods, args.seeds, data, args.fraction,
                     {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size},
                     parse_method_args(args.method_arg, args.methods), args.data_dir, args.zoo_dir, args.device)


def print_study(result: dict[str, Any], store: Path, seconds: float) -> int:
    """Prints the study's counts, failures and summary; returns the exit code (1: some job failed)."""
    from gkt.cli.study import print_failures

    print(f"{result['counts'].describe('transfer jobs')} ({seconds:.0f}s); results store: {store}")
    print_failures(result["store"], result["counts"])
    print(format_table(result["summary"]))
    return 0 if result["counts"].ok else 1


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.adapt.heads import AdaptConfig
    from gkt.models.specs import source_prefixes

    d = AdaptConfig()
    p.add_argument("--models", nargs="+", required=True,
                   help=f"model specs to adapt ({source_prefixes()}; see gkt --help)")
    p.add_argument("--data", default="digits",
                   help="target data spec: digits (scikit-learn 8x8 digits at 28x28) | folder:PATH | any gkt data "
                        "spec (default: digits)")
    p.add_argument("--full", action="store_true", help="fine-tune every weight after the probe (default: linear probe "
                                                       "on frozen features)")
    p.add_argument("--l2", type=float, nargs="+", default=None,
                   help="probe L2 strength(s); several are compared on a val share of train (default: "
                        f"{' '.join(f'{v:g}' for v in d.l2)})")
    add_config_option(p, "--ft-epochs", d.finetune, "epochs", help="--full: fine-tuning epochs")
    add_config_option(p, "--ft-lr", d.finetune, "lr", help="--full: peak SGD learning rate")
    add_config_option(p, "--ft-batch-size", d.finetune, "batch_size", help="--full: batch size")
    p.add_argument("--transfer", action="store_true",
                   help="then transfer between the adapted models (all ordered pairs) on the target data")
    p.add_argument("--students", nargs="+", default=None, metavar="SPEC",
                   help="--transfer: only these of --models as students (default: all; every model is a teacher)")
    add_transfer_options(p, epochs=20, fraction=1.0)


@register_verb("adapt", "fit new heads on a target dataset (linear probe / --full), optionally transfer between them",
               _configure)
def adapt(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gkt.adapt.heads import AdaptConfig, adapt_cached
    from gkt.core.io import write_csv
    from gkt.experiments.adapt_study import transfer_study

    if len(set(args.models)) != len(args.models):
        raise GktError("--models lists a model twice")
    cfg = AdaptConfig(mode="full" if args.full else "probe", seed=args.seed)
    cfg = replace(cfg, finetune=replace(cfg.finetune, epochs=args.ft_epochs, lr=args.ft_lr,
                                        batch_size=args.ft_batch_size))
    if args.l2:
        cfg = replace(cfg, l2=tuple(args.l2))
    rows, labels, code = [], {}, 0
    for spec in args.models:
        adapted, record = adapt_cached(spec, args.data, cfg, args.torch_device, args.data_dir, args.zoo_dir)
        labels[adapted] = spec
        rows.append({"model": spec, "adapted": adapted, "mode": record["mode"], "l2": record["l2"],
                     "probe_test_acc": round(100 * record["probe_test_acc"], 2),
                     "test_acc": round(100 * record["test_acc"], 2), "seconds": record["seconds"],
                     "cached": record["cached"]})
    write_csv(args.run_dir / "adapted.csv", rows)
    write_json(args.run_dir / "adapted.json", {"data": args.data, "config": cfg.to_dict(), "models": rows})
    print(f"adapted to {args.data} ({cfg.mode}); test accuracy in %:")
    print(format_table(rows, ["model", "mode", "l2", "probe_test_acc", "test_acc", "seconds", "cached", "adapted"]))
    if args.transfer:
        if len(rows) < 2:
            raise GktError("--transfer needs at least two --models")
        specs = [r["adapted"] for r in rows]
        unknown = sorted(set(args.students or []) - set(args.models))
        if unknown:
            raise GktError(f"--students {unknown} are not among --models")
        students = [r["adapted"] for r in rows if args.students is None or r["model"] in args.students]
        start = time.perf_counter()
        store = store_path(args)
        result = transfer_study(study_plan(args, students, specs, args.data), args.run_dir, labels, args.workers,
                                args.threads, title=f"Transfer between models adapted to {args.data} ({cfg.mode})",
                                store_path=store, retry_failed=args.retry_failed)
        code = print_study(result, store or args.run_dir / "results.sqlite", time.perf_counter() - start)
    print(f"run directory: {args.run_dir}")
    return code
