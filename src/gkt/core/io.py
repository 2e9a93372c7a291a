"""Atomic file writes, JSON, run directories and the cache home."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gkt.core.env import env, register_env
from gkt.core.errors import GktError
from gkt.core.limits import check_path


def _home_path(text: str) -> Path:
    check_path(text, "$GKT_HOME")
    return Path(text).expanduser()


register_env("GKT_HOME", "a writable directory for gkt's caches (default ~/.cache/gkt)", _home_path)


def cache_home() -> Path:
    """Root of gkt's on-disk caches: ``$GKT_HOME`` (empty: unset) or ``~/.cache/gkt``."""
    return env("GKT_HOME") or Path.home() / ".cache" / "gkt"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: setting it to read it is not thread-safe


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds, with the
    permissions a new file gets (``0o666`` less the umask: a shared cache or results folder stays readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_permissions(directory: str | os.PathLike) -> None:
    """Give every file below ``directory`` the permissions a new file gets (``0o666`` less the umask): some
    libraries write through private temporary files (mode ``0o600``), which others could not read."""
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~_UMASK)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file (as :func:`write_csv` writes them) as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """The one CSV writer: atomic; columns are the union of the rows' keys in first-seen order unless given;
    dict and list values are written as JSON."""
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
                         for row in rows)


FileStamp = tuple[int, int, int]


def file_stamp(st: os.stat_result) -> FileStamp:
    """What identifies a file's contents without reading it: size, modification and status-change time (ns).
    The status-change time catches a file replaced by one of the same size and modification time
    (``cp -p``, ``touch -r``): the system sets it on every write and cannot be told to set it back."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def parse_json(text: str) -> Any:
    """``json.loads``, with input nested too deeply to parse (a RecursionError) as a ValueError like any other
    malformed JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def read_json(path: str | os.PathLike) -> Any:
    return parse_json(Path(path).read_text())


def new_run_dir(root: str | os.PathLike, command: str) -> Path:
    """Create ``root/<command>-<timestamp>[-n]`` and return it; never reuses an existing directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        candidate = root / (f"{command}-{stamp}" + (f"-{n}" if n else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise GktError(f"could not create a fresh run directory under {root}")
