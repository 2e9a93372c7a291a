"""The ``gkt`` command line. Verbs live in ``gkt.cli.<module>`` and register themselves with
:func:`register_verb`; each run writes one run directory (config, log, results)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gkt import __version__
from gkt.cli.config import parse_args, resolved_config, write_config
from gkt.core.errors import GktError
from gkt.core.io import new_run_dir, write_json
from gkt.core.registry import Registry
from gkt.core.runtime import resolve_device, seed_everything, set_threads
from gkt.data.decode import BAD_IMAGE_POLICIES, bad_image_policy, bad_images_default, reset_skipped, skipped_images
from gkt.data.spec import SYNTAX as DATA_SYNTAX
from gkt.engine.distributed import from_environment, shutdown

log = logging.getLogger("gkt")

# Modules whose import registers verbs, in the order they appear in --help.
VERB_MODULES = ("gkt.cli.zoo", "gkt.cli.analyze", "gkt.cli.transfer", "gkt.cli.study", "gkt.cli.kdep", "gkt.cli.adapt", "gkt.cli.crossdomain", "gkt.cli.report", "gkt.cli.demo")


@dataclass(frozen=True)
class Verb:
    path: str  # e.g. "zoo build"
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# Free space the output root must have before a command starts (override: $GKT_MIN_FREE_MB).
MIN_FREE_MB = 100

VERBS: Registry[Verb] = Registry("verb")
GROUP_HELP: dict[str, str] = {}


def register_verb(path: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None
                  ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``run(args) -> exit code`` as the CLI verb ``path`` (one or two words)."""

    def decorate(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        VERBS[path] = Verb(path, help, configure, run)
        return run

    return decorate


def add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--config", metavar="FILE.yaml",
                       help="read the options from a YAML file (keys = option names; flags given here override it; "
                            "every run directory holds its resolved config.yaml)")
    group.add_argument("--out", default="runs", help="root of run directories (default: ./runs)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    group.add_argument("--data-dir", default=None,
                       help="directory with the Fashion-MNIST IDX files (else $GKT_DATA, the Debian package, the cache)")
    group.add_argument("--zoo-dir", default=None, help="where the embedded zoo is cached (default: $GKT_HOME/zoo)")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")


# Verbs that read image data (folders, hf: datasets): they take --bad-images.
IMAGE_VERBS = ("analyze", "transfer", "study", "adapt", "crossdomain", "kdep pretrain", "kdep finetune",
               "kdep benchmark")


def add_bad_images_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES,
                        help="an image that cannot be decoded: fail naming it, or skip: leave it out when it is "
                             f"decoded and report how many were left out at the end (default: {bad_image_policy()})")


def report_skipped(run_dir: Path) -> None:
    """Print (and keep in the run directory) the images this command left out under --bad-images skip."""
    skipped = skipped_images()
    if not skipped:
        return
    write_json(run_dir / "skipped_images.json", skipped)
    shown = "; ".join(f"{source} ({reason})" for source, reason in list(skipped.items())[:5])
    print(f"skipped {len(skipped)} unreadable image(s) (--bad-images skip): {shown}"
          + (" …" if len(skipped) > 5 else "") + f"; list in {run_dir / 'skipped_images.json'}")


def build_parser() -> argparse.ArgumentParser:
    for module in VERB_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="gkt", description="General knowledge transfer between any pretrained classifiers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="model specs: zoo:NAME | timm:ARCH[@WEIGHTS][?k=v&...] | file:PATH\n"
               f"data specs:  {DATA_SYNTAX}\n"
               "             (BASE: fmnist | digits | folder:PATH with PATH/train/<class>/*.jpg, PATH/val/... |\n"
               "              hf:DIR saved by datasets' save_to_disk | hf:ORG/NAME[:CONFIG] from the datasets cache)")
    parser.add_argument("--version", action="version", version=f"gkt {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for verb in VERBS.values():
        head, _, tail = verb.path.partition(" ")
        if tail:
            if head not in groups:
                group = verbs.add_parser(head, help=GROUP_HELP.get(head, head))
                groups[head] = group.add_subparsers(dest="action", metavar="ACTION", required=True)
            sub = groups[head].add_parser(tail, help=verb.help, description=verb.help)
        else:
            sub = verbs.add_parser(head, help=verb.help, description=verb.help)
        verb.configure(sub)
        if verb.path in IMAGE_VERBS:
            add_bad_images_option(sub)
        add_common_options(sub)
        sub.set_defaults(command=verb.path)
    return parser


def open_run_dir(out: str, command: str) -> Path:
    """A fresh run directory under ``out``; an unwritable ``out`` or a disk with less than
    :data:`MIN_FREE_MB` free is a clear error before any work is done."""
    existing = Path(out).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free_mb = shutil.disk_usage(existing).free / 2**20
    try:
        needed = float(os.environ.get("GKT_MIN_FREE_MB", MIN_FREE_MB))
    except ValueError:
        raise GktError(f"$GKT_MIN_FREE_MB must be a number of megabytes, got {os.environ['GKT_MIN_FREE_MB']!r}") from None
    if free_mb < needed:
        raise GktError(f"--out {out}: only {free_mb:.0f} MB free on its disk, gkt needs at least {needed:.0f} MB "
                       "(free space, or point --out elsewhere; $GKT_MIN_FREE_MB sets the threshold)")
    try:
        run_dir = new_run_dir(out, command.replace(" ", "-"))
        with open(run_dir / ".write-check", "w") as f:
            f.write("ok")
        (run_dir / ".write-check").unlink()
    except OSError as exc:
        raise GktError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable --out") from None
    return run_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(parser, argv)
    except GktError as exc:
        print(f"gkt: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        device = resolve_device(args.device)
        dist = from_environment(device)  # several processes under torchrun: rank 0 makes the run directory
        args.torch_device = dist.device(device)
        args.run_dir = dist.broadcast(open_run_dir(args.out, args.command) if dist.is_main else None)
        set_threads(args.threads)
        seed_everything(args.seed)
        if dist.is_main:
            handler = logging.FileHandler(args.run_dir / "log.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(handler)
            config = {k: v for k, v in vars(args).items() if k not in ("torch_device", "run_dir")}
            write_json(args.run_dir / "config.json", {"gkt_version": __version__, "torch": torch.__version__,
                                                      "device": str(args.torch_device), **config})
            write_config(args.run_dir / "config.yaml", resolved_config(args))
        else:
            logging.getLogger().setLevel(logging.WARNING)
        args.dist = dist
        reset_skipped()
        with bad_images_default(getattr(args, "bad_images", None)):
            code = VERBS[args.command].run(args)
        if dist.is_main:
            report_skipped(args.run_dir)
        return code
    except GktError as exc:
        print(f"gkt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gkt: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()
