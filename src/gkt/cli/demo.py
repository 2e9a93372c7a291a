"""``gkt demo``: zoo → analysis → a transfer study over all ordered pairs → report, on the embedded default."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from gkt.cli import VERBS, build_parser, register_verb

# The cheapest six zoo models that still span the zoo's accuracy range: 30 ordered pairs.
DEMO_MODELS = ("zoo:linear-7px", "zoo:linear", "zoo:mlp-14px", "zoo:mlp", "zoo:mlp-deep", "zoo:cnn")
DEMO_METHODS = ("kl", "xekl", "xekl-mcl", "kl-dp", "kl-dp-unsup")


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS), help="zoo models of the study (>= 2)")
    p.add_argument("--methods", nargs="+", default=list(DEMO_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=None, help="transfer epochs (default: the transfer default)")
    p.add_argument("--workers", type=int, default=2, help="parallel study processes (default: 2)")


def run_step(argv: Sequence[str], parent: argparse.Namespace, run_dir: Path) -> int:
    """Run another verb with ``parent``'s common options, writing into ``run_dir``."""
    common = ["--seed", str(parent.seed), "--device", parent.device, "--out", str(run_dir.parent)]
    common += [f"--{k.replace('_', '-')}={getattr(parent, k)}" for k in ("data_dir", "zoo_dir", "threads") if getattr(parent, k)]
    args = build_parser().parse_args([*argv, *common])
    run_dir.mkdir(parents=True, exist_ok=True)
    args.run_dir, args.torch_device = run_dir, parent.torch_device
    return VERBS[args.command].run(args)


@register_verb("demo", "end-to-end demo: zoo, analysis, a transfer study over all pairs, report", _configure)
def demo(args: argparse.Namespace) -> int:
    from gkt.reporting.html import write_report
    from gkt.reporting.study_tables import paper_claims
    from gkt.reporting.tables import format_table, numeric_text

    start = time.perf_counter()
    print("== gkt demo 1/4: the embedded zoo (trained once, then cached) ==", flush=True)
    run_step(["zoo", "build"], args, args.run_dir / "zoo")
    zoo_seconds = time.perf_counter() - start
    print("\n== gkt demo 2/4: where are the gains? (complementary knowledge on the test split) ==", flush=True)
    run_step(["analyze", "--models", "zoo", "--student", args.models[-1]], args, args.run_dir / "analysis")
    print(f"\n== gkt demo 3/4: transfer study — {len(args.methods)} methods x {len(args.models)} models "
          f"({len(args.models) * (len(args.models) - 1)} ordered pairs) x {len(args.seeds)} seed(s) ==", flush=True)
    study = ["study", "--students", *args.models, "--methods", *args.methods, "--seeds", *map(str, args.seeds),
             "--workers", str(args.workers)]
    if args.epochs is not None:
        study += ["--epochs", str(args.epochs)]
    code = run_step(study, args, args.run_dir / "study")
    print("\n== gkt demo 4/4: reports ==", flush=True)
    reports = [write_report(args.run_dir / part)[0] for part in ("analysis", "study")]
    summary = (args.run_dir / "study" / "success_table.csv")
    if summary.is_file():
        import csv

        with open(summary, newline="") as f:
            table = list(csv.DictReader(f))
        print(format_table([{k: numeric_text(v) for k, v in row.items()} for row in table]))
        print("success_% = share of pairs with Δtransf > 0; clear_gain_% / clear_loss_% = share of pairs whose "
              "gained samples outnumber the lost (or the reverse) beyond test-sample noise (McNemar, 2 s.e.)")
        print("\n" + format_table(paper_claims([{**row, "success_%": float(row["success_%"])} for row in table])))
    total = time.perf_counter() - start
    print(f"\ndemo finished in {total:.0f}s (zoo step {zoo_seconds:.0f}s)")
    for path in reports:
        print(f"report: {path}")
    return code
