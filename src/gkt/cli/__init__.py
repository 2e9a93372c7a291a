"""The ``gkt`` command line. Verbs live in ``gkt.cli.<module>`` and register themselves with
:func:`register_verb`; each run writes one run directory (config, log, results)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gkt import __version__
from gkt.cli.config import GIVEN, parse_args, resolved_config, take_run_options, write_config
from gkt.cli.rundir import FAILED_MARK, finish_run, open_run_dir, reopen_run_dir, write_traceback
from gkt.core.env import ENV_VARS, check_environment, unknown_variables
from gkt.core.errors import GktError, storage_error
from gkt.core.io import read_json, write_json
from gkt.core.registry import Registry
from gkt.core.runtime import resolve_device, seed_everything, set_threads
from gkt.data.decode import (
    BAD_IMAGE_POLICIES,
    bad_image_policy,
    bad_images_default,
    reset_skipped,
    skipped_images,
)
from gkt.data.spec import SYNTAX as DATA_SYNTAX
from gkt.data.spec import check_data_dir
from gkt.engine.distributed import from_environment, shutdown
from gkt.models.specs import SPEC_SOURCES, img_size_default, parse_img_size

log = logging.getLogger("gkt")

# Modules whose import registers verbs, in the order they appear in --help.
VERB_MODULES = ("gkt.cli.improve", "gkt.cli.mutual", "gkt.cli.zoo", "gkt.cli.analyze", "gkt.cli.transfer", "gkt.cli.study", "gkt.cli.kdep", "gkt.cli.adapt", "gkt.cli.crossdomain", "gkt.cli.export", "gkt.cli.report", "gkt.cli.demo")


@dataclass(frozen=True)
class Verb:
    path: str  # e.g. "zoo build"
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    resumed: tuple[str, ...] = ()  # with --resume RUN_DIR, these options (and --epochs) come from that run
    # with --resume RUN_DIR, the run continues in RUN_DIR itself; this checks, before anything is written, that it can
    reopens: Callable[[argparse.Namespace], None] | None = None


VERBS: Registry[Verb] = Registry("verb")
GROUP_HELP: dict[str, str] = {}


def register_verb(path: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = lambda p: None,
                  resumed: tuple[str, ...] = (), reopens: Callable[[argparse.Namespace], None] | None = None
                  ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register ``run(args) -> exit code`` as the CLI verb ``path`` (one or two words). A verb whose
    ``--resume RUN_DIR`` continues an interrupted run names the options it takes from it (``resumed``): they
    are set before the command starts (its seed, input size, bad-image policy and records included). A verb
    whose ``--resume RUN_DIR`` continues in RUN_DIR itself (a study: its store, tables and report stay
    together) gives ``reopens``, the check that RUN_DIR can be continued, run before anything is written."""

    def decorate(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        VERBS[path] = Verb(path, help, configure, run, resumed, reopens)
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
    group.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's, all CPUs; while processes decode images beside it, "
                            "the CPUs they leave)")
    group.add_argument("--data-dir", default=None,
                       help="directory with the Fashion-MNIST IDX files (else $GKT_DATA, the Debian package, the cache)")
    group.add_argument("--zoo-dir", default=None, help="where the embedded zoo is cached (default: $GKT_HOME/zoo)")
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging")


# Verbs that read image data (folders, hf: datasets): they take --bad-images.
IMAGE_VERBS = ("improve", "mutual", "analyze", "transfer", "study", "adapt", "crossdomain", "kdep pretrain", "kdep finetune",
               "kdep benchmark")


# Options that hold a command's data specs: --data-dir is refused when none of them reads it (check_data_dir).
DATA_SPEC_OPTIONS = ("data", "pretrain_data", "downstream")


def check_data_dir_read(args: argparse.Namespace) -> None:
    """A clear error for a --data-dir that the command's data would not read (an input is never ignored)."""
    specs: list[str] = []
    for name in DATA_SPEC_OPTIONS:
        value = getattr(args, name, None)
        specs += [] if value is None else [value] if isinstance(value, str) else list(value)
    if specs:
        check_data_dir(args.data_dir, specs)


def img_size(text: str) -> int:
    """``--img-size``: an integer from 1 to :data:`~gkt.models.specs.MAX_IMG_SIZE` (as ``$GKT_IMG_SIZE``)."""
    try:
        return parse_img_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_bad_images_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bad-images", choices=BAD_IMAGE_POLICIES,
                        help="an image that cannot be decoded: fail naming it, or skip: leave it out when it is "
                             f"decoded and report how many were left out at the end (default: {bad_image_policy()})")
    parser.add_argument("--img-size", type=img_size, default=None, metavar="N",
                        help="evaluate every timm:/hf:/torchvision: model at N px input (its resize size scaled "
                             "by its crop_pct); a spec's own ?img_size=N wins (default: each model's own)")


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
        epilog="model specs: " + "\n             ".join(source.usage for source in SPEC_SOURCES.values()) + "\n"
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


def _unexpected(exc: Exception, argv: Sequence[str], run_dir: Path | None) -> tuple[str, str, int]:
    """``(error, message, exit code)`` of an exception that is no GktError: a user's storage problem (code 2),
    else a bug (code 1: one line, the traceback in a log file)."""
    user_error = storage_error(exc)
    if user_error is not None:
        return str(user_error), str(user_error), 2
    log_path = write_traceback(argv, run_dir)
    error = f"unexpected {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    where = f"the traceback is in {log_path}; please report it with that file" if log_path else \
        "no traceback log could be written; please report it"
    return error, f"{error} (a bug in gkt: {where})", 1


def _fail(message: str, code: int = 2) -> int:
    print(f"gkt: error: {message}", file=sys.stderr)
    return code


def record_config(args: argparse.Namespace, reopened: bool = False) -> None:
    """Write the run's ``config.json`` (its options, versions, device; ``status: running`` until it ends)
    and ``config.yaml`` (what ``--config`` reruns); a verb that resolves options itself (``--resume``)
    records them again. A ``reopened`` run directory keeps its own records: this invocation is appended to
    its ``config.json``'s ``resumed`` list."""
    config = {k: v for k, v in vars(args).items() if k not in ("torch_device", "run_dir", "dist", GIVEN)}
    record = {"gkt_version": __version__, "torch": torch.__version__, "device": str(args.torch_device), **config,
              "status": "running", "pid": os.getpid(), "host": socket.gethostname()}
    path = args.run_dir / "config.json"
    if reopened and path.is_file():
        before = read_json(path)
        write_json(path, {**before, "status": "running", "resumed": [*before.get("resumed", []), record]})
        return
    write_json(path, record)
    write_config(args.run_dir / "config.yaml", resolved_config(args))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler, ``docker stop``): ends a command as Ctrl-C does."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """:func:`run_command`, with SIGTERM handled as an interruption (in the main thread, where signals go)."""
    if threading.current_thread() is not threading.main_thread():
        return run_command(argv)
    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_command(argv)
    finally:
        signal.signal(signal.SIGTERM, before)


def run_command(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 2 a user error (one message: what is wrong and how to fix
    it), 1 an unexpected error (one line plus the path of a log holding its traceback), 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM).
    A run directory of a command that did not finish is removed or marked (:mod:`gkt.cli.rundir`)."""
    try:
        check_environment()  # before the parser: its help texts show defaults the variables set
    except GktError as exc:
        return _fail(str(exc))
    for name in unknown_variables():  # never ignored without a word
        print(f"gkt: warning: ${name} is set but gkt reads no such variable (it reads "
              f"{', '.join(sorted(ENV_VARS))}); it has no effect", file=sys.stderr)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(parser, argv)
        check_data_dir_read(args)
    except GktError as exc:
        return _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 — before any run directory: one line, the traceback in a log
        return _fail(*_unexpected(exc, argv, None)[1:])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_dir, handler, status, error, reopen = None, None, "failed", None, False
    try:
        verb = VERBS[args.command]
        if verb.resumed and getattr(args, "resume", None):
            take_run_options(args, verb.path, verb.resumed)
            check_data_dir_read(args)  # the run's own data decides whether --data-dir is read
        reopen = verb.reopens is not None and bool(getattr(args, "resume", None))
        if reopen:
            verb.reopens(args)  # a resume refused here leaves RUN_DIR as it was
            if "out" in getattr(args, GIVEN, ()):
                log.info("--out is not used: --resume continues in %s itself", args.resume)
        device = resolve_device(args.device)
        dist = from_environment(device)  # several processes under torchrun: rank 0 makes the run directory
        args.torch_device = dist.device(device)
        args.run_dir = dist.broadcast(((reopen_run_dir(args.resume, args.command) if reopen else
                                        open_run_dir(args.out, args.command)) if dist.is_main else None))
        run_dir = args.run_dir if dist.is_main else None
        set_threads(args.threads)
        seed_everything(args.seed)
        if dist.is_main:
            handler = logging.FileHandler(args.run_dir / "log.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(handler)
            record_config(args, reopen)
        else:
            logging.getLogger().setLevel(logging.WARNING)
        args.dist = dist
        reset_skipped()
        with bad_images_default(getattr(args, "bad_images", None)), img_size_default(getattr(args, "img_size", None)):
            code = verb.run(args)
        if dist.is_main:
            report_skipped(args.run_dir)
        status = "ok" if code == 0 else "failed"
        error = None if code == 0 else f"exit code {code}"
        return code
    except GktError as exc:
        error = str(exc)
        return _fail(error)
    except KeyboardInterrupt:
        terminated = isinstance(sys.exc_info()[1], Terminated)
        status, error = "interrupted", "terminated (SIGTERM)" if terminated else "interrupted by the user"
        print(f"gkt: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as exc:
        error, message, code = _unexpected(exc, argv, run_dir)
        return _fail(message, code)
    finally:
        shutdown(completed=status == "ok")
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if run_dir is not None and finish_run(run_dir, status, error, reopen) is not None and status != "ok":
            print(f"gkt: the unfinished run directory {run_dir} is kept (marked {FAILED_MARK})", file=sys.stderr)
