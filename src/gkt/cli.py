"""The ``gkt`` command line. Each verb writes one run directory (config, metrics, logs)."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from gkt import __version__
from gkt.report import format_table
from gkt.utils import GktError, new_run_dir, resolve_device, seed_everything, set_threads, write_json

log = logging.getLogger("gkt")
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the function that runs CLI verb ``name`` (e.g. ``zoo build``)."""

    def decorate(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return decorate


def add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--out", default="runs", help="root of run directories (default: ./runs)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    group.add_argument("--data-dir", default=None,
                       help="directory with the Fashion-MNIST IDX files (else $GKT_DATA, the Debian package, the cache)")
    group.add_argument("--zoo-dir", default=None, help="where the embedded zoo is cached (default: $GKT_HOME/zoo)")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gkt", description="General knowledge transfer between any pretrained classifiers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="model specs: zoo:NAME | timm:ARCH[@WEIGHTS][?k=v&...] | file:PATH\n"
               "data specs:  fmnist | folder:PATH (PATH/train/<class>/*.jpg, PATH/val/...)")
    parser.add_argument("--version", action="version", version=f"gkt {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    zoo = verbs.add_parser("zoo", help="build and list the embedded Fashion-MNIST model zoo")
    zoo_verbs = zoo.add_subparsers(dest="zoo_verb", metavar="ACTION", required=True)
    build = zoo_verbs.add_parser("build", help="train the zoo models that are not cached yet")
    build.add_argument("--only", nargs="+", metavar="NAME", help="build only these zoo models")
    build.add_argument("--no-check", action="store_true", help="skip the convergence check")
    build.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (smoke runs)")
    build.add_argument("--fraction", type=float, default=1.0, help="train on this stratified share of train")
    add_common_options(build)
    listing = zoo_verbs.add_parser("list", help="print the built zoo models")
    add_common_options(listing)

    demo = verbs.add_parser("demo", help="end-to-end demo: build the zoo and show it")
    add_common_options(demo)
    return parser


def _print_zoo(records: Sequence, run_dir: Path | None = None) -> None:
    rows = []
    for r in records:
        conv = r.convergence
        rows.append({"name": r.name, "family": r.family, "params": r.params, "test_acc": round(100 * r.test_acc, 2),
                     "check_delta": "-" if conv is None else f"{100 * conv['delta']:+.2f}",
                     "check": "-" if conv is None else ("ok" if conv["passed"] else "FAIL"),
                     "train_s": r.train_seconds, "recipe": r.recipe})
    print(format_table(rows))
    if rows:
        accs = [row["test_acc"] for row in rows]
        print(f"\n{len(rows)} models, {len({r.family for r in records})} families, "
              f"test accuracy {min(accs):.2f}–{max(accs):.2f}% (span {max(accs) - min(accs):.2f} points, "
              "Fashion-MNIST 10k test split); check = test-accuracy change after one more epoch of plain CE "
              "at lr 0.01 (must be ≤ +0.30)")
    if run_dir is not None and rows:
        with open(run_dir / "zoo.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        write_json(run_dir / "zoo.json", [{**asdict(r), "path": str(r.path)} for r in records])


@command("zoo build")
def cmd_zoo_build(args: argparse.Namespace) -> int:
    from gkt.zoo import DEFAULT_ZOO, build_zoo, get_entry, scaled_entries

    entries = tuple(get_entry(n) for n in args.only) if args.only else DEFAULT_ZOO
    entries = scaled_entries(entries, args.epochs)
    start = time.perf_counter()
    records = build_zoo(entries, zoo_dir=args.zoo_dir, device=args.torch_device, data_dir=args.data_dir,
                        check=not args.no_check, train_fraction=args.fraction)
    _print_zoo(records, args.run_dir)
    print(f"\nzoo ready in {time.perf_counter() - start:.0f}s ({sum(not r.cached for r in records)} trained, "
          f"{sum(r.cached for r in records)} cached); run directory: {args.run_dir}")
    return 0


@command("zoo list")
def cmd_zoo_list(args: argparse.Namespace) -> int:
    from gkt.zoo import list_zoo, zoo_dir_default

    records = list_zoo(args.zoo_dir)
    if not records:
        print(f"no zoo models built in {args.zoo_dir or zoo_dir_default()}; run `gkt zoo build`")
        return 1
    _print_zoo(records, args.run_dir)
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print("== gkt demo: step 1/1 — the embedded zoo ==")
    args.only, args.no_check, args.epochs, args.fraction = None, False, None, 1.0
    cmd_zoo_build(args)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    name = args.verb + (f" {args.zoo_verb}" if getattr(args, "zoo_verb", None) else "")
    try:
        set_threads(args.threads)
        seed_everything(args.seed)
        args.torch_device = resolve_device(args.device)
        args.run_dir = new_run_dir(args.out, name.replace(" ", "-"))
        handler = logging.FileHandler(args.run_dir / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        config = {k: v for k, v in vars(args).items() if k not in ("torch_device", "run_dir")}
        write_json(args.run_dir / "config.json", {"command": name, "gkt_version": __version__,
                                                  "torch": torch.__version__, "device": str(args.torch_device),
                                                  **config})
        return COMMANDS[name](args)
    except GktError as exc:
        print(f"gkt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gkt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
