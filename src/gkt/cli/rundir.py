"""A command's run directory and where it may write: up-front checks of ``--out`` and ``$GKT_HOME``,
the traceback log of an unexpected error, and how a run ends (``status`` in its ``config.json``).

A run directory that fails holds no result: when it has nothing but its bookkeeping files
(:data:`BOOKKEEPING`) it is removed; when it holds partial outputs (e.g. ``state.pt`` for ``--resume``,
a failed ``final.json``) it is kept and marked with a ``FAILED`` file (the error) and
``"status": "failed"`` in ``config.json``. A finished run's ``config.json`` says ``"status": "ok"``."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from gkt.core.env import env, register_env
from gkt.core.errors import GktError, register_location
from gkt.core.io import cache_home, new_run_dir, read_json, write_json
from gkt.core.limits import check_path

# Free space a location gkt writes to must have before a command starts (override: $GKT_MIN_FREE_MB).
MIN_FREE_MB = 100

# What every run directory holds from its start: a failed run with nothing more is removed.
BOOKKEEPING = frozenset({"config.json", "config.yaml", "log.txt", "resolved_config.json"})

FAILED_MARK = "FAILED"


def _megabytes(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text} is no number of megabytes from 0 up")
    return value


register_env("GKT_MIN_FREE_MB", f"the free space a command needs, in megabytes (default {MIN_FREE_MB})",
             _megabytes)


def _min_free_mb() -> float:
    return env("GKT_MIN_FREE_MB", MIN_FREE_MB)


def _check_free_space(path: Path, what: str, fix: str) -> None:
    """The disk holding ``path`` (or its nearest existing parent) has :data:`MIN_FREE_MB` free."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free_mb = shutil.disk_usage(existing).free / 2**20
    needed = _min_free_mb()
    if free_mb < needed:
        raise GktError(f"{what}: only {free_mb:.0f} MB free on its disk, gkt needs at least {needed:.0f} MB "
                       f"(free space, or {fix}; $GKT_MIN_FREE_MB sets the threshold)")


def check_writable(directory: Path, what: str, fix: str) -> None:
    """``directory`` exists (created if missing) and a file can be written into it."""
    blocking = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise GktError(f"{what}: {blocking} is a file, not a directory; {fix}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GktError(f"{what}: cannot write there ({exc.strerror or exc}); {fix}") from None


def open_run_dir(out: str, command: str) -> Path:
    """A fresh run directory under ``out``, after checking that ``out`` and the cache home
    (``$GKT_HOME``, where models, predictions and transfer runs are cached) are writable and have room."""
    home = cache_home()
    check_path(out, "--out")
    register_location("--out", out)
    check_path(f"{out}/{command.replace(' ', '-')}-YYYYmmdd-HHMMSS-NN", "--out")  # room for a run directory
    home_fix = "set GKT_HOME to a writable directory with free space"
    _check_free_space(home, f"$GKT_HOME {home}", home_fix)
    _check_free_space(Path(out), f"--out {out}", "point --out elsewhere")
    check_writable(home, f"$GKT_HOME {home}", home_fix)
    check_writable(Path(out), f"--out {out}", "choose a writable --out")
    try:
        run_dir = new_run_dir(out, command.replace(" ", "-"))
    except OSError as exc:
        raise GktError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable --out") from None
    check_writable(run_dir, f"--out {out}", "choose a writable --out")
    return run_dir


def reopen_run_dir(path: str, command: str) -> Path:
    """``--resume RUN_DIR`` of a verb that continues in RUN_DIR itself: RUN_DIR, checked to be a directory
    (of a ``command`` run, where it records one) that can be written, with ``$GKT_HOME`` as for a new run."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise GktError(f"--resume {path}: no such run directory; give the run directory of the `{command}` to "
                       "continue")
    config = run_dir / "config.json"
    try:
        recorded = read_json(config).get("command") if config.is_file() else command
    except (ValueError, AttributeError, OSError):
        recorded = None
    if recorded != command:
        raise GktError(f"--resume {path}: not the run directory of a `{command}` (its config.json says "
                       f"{recorded!r}); give the run directory of the `{command}` to continue")
    home = cache_home()
    _check_free_space(home, f"$GKT_HOME {home}", "set GKT_HOME to a directory with free space")
    _check_free_space(run_dir, f"--resume {path}", "free space there")
    check_writable(home, f"$GKT_HOME {home}", "set GKT_HOME to a writable directory with free space")
    check_writable(run_dir, f"--resume {path}", "make it writable")
    return run_dir


def write_traceback(argv: Sequence[str], run_dir: Path | None) -> Path | None:
    """Write the current exception's traceback to a log file (``$GKT_HOME/logs``, else the temp
    directory) and return its path (None when no location can be written)."""
    text = f"gkt {' '.join(argv)}\nrun directory: {run_dir}\n\n{traceback.format_exc()}"
    name = f"gkt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for directory in (cache_home() / "logs", Path(tempfile.gettempdir()) / "gkt-logs"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text)
            return directory / name
        except OSError:
            continue
    return None


def finish_run(run_dir: Path, status: str, error: str | None = None, reopened: bool = False) -> Path | None:
    """Record how the run ended: ``status`` (``ok``, ``failed``, ``interrupted``) in ``config.json``; a
    run that did not end ``ok`` is removed when it holds only bookkeeping, else marked with ``FAILED``; so is
    a finished run that left nothing but bookkeeping and an empty log (its results went elsewhere). A
    ``reopened`` run directory (``--resume`` in place) is never removed, and loses its ``FAILED`` mark
    when it ends ``ok``. Returns the run directory when it is kept."""
    try:
        names = {p.name for p in run_dir.iterdir()}
        log = run_dir / "log.txt"
        wrote_nothing = status == "ok" and (not log.is_file() or log.stat().st_size == 0)
        if names <= BOOKKEEPING and (status != "ok" or wrote_nothing) and not reopened:  # e.g. report, export
            shutil.rmtree(run_dir)
            return None
        if status == "ok":
            (run_dir / FAILED_MARK).unlink(missing_ok=True)
        config = run_dir / "config.json"
        if config.is_file():
            recorded = {k: v for k, v in read_json(config).items() if k != "error"}  # a resumed run's old error
            write_json(config, {**recorded, "status": status, **({"error": error} if error else {})})
        if status != "ok":
            (run_dir / FAILED_MARK).write_text(f"{status}: {error or ''}\n")
    except (OSError, ValueError):  # a full or vanished disk: the error itself was already reported
        pass
    return run_dir
