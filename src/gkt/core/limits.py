"""The one size guard for what a user's input can expand into: class ranges, YAML aliases, image dimensions
and text files are checked against these limits *before* anything is expanded, decoded or allocated, and
refused with a message naming the input, its size and the limit (instead of a MemoryError, an OOM kill or a
decompression bomb).

It also reads the small text inputs a user names (``--config``, class maps, class lists): a pipe
(``<(…)``) is read like a file, a directory, binary garbage or an over-long path is refused by name."""

from __future__ import annotations

import errno
import math
import os
import select
import time
from pathlib import Path
from typing import Any

from gkt.core.errors import GktError

# Entries a class list may expand to (ImageNet-21k has 21,841 classes).
MAX_LISTED_CLASSES = 100_000
# Pixels an image may have before it is decoded (PIL's decompression-bomb threshold: ~89 M, 268 MB as RGB).
MAX_IMAGE_PIXELS = 89_478_485
# Jobs one study may expand to (students x teachers x methods x seeds x grid values).
MAX_JOBS = 100_000
# Bytes of a text input a user names (--config, a class map, a class-name list).
MAX_TEXT_BYTES = 16 * 2**20
# What one batch costs in memory, as a multiple of its float32 input tensor (the decoded and resized copies
# and the first activations, e.g. a 64-channel stem at half resolution): a batch that cannot fit is refused
# before it starts instead of being killed by the system.
BATCH_MEMORY_FACTOR = 16
# Batches smaller than this are not checked against the memory left (reading it costs a system call).
BATCH_MEMORY_UNCHECKED = 2**30


def check_size(what: str, size: int, limit: int, unit: str, fix: str) -> None:
    """Refuse ``what`` when its ``size`` (in ``unit``) is over ``limit``, before it is expanded."""
    if size > limit:
        raise GktError(f"{what}: {size:,} {unit}, more than the {limit:,} gkt accepts; {fix}")


# The text of each pipe read so far (a pipe can be read once; a command may read its input twice).
_PIPES_READ: dict[str, str] = {}


def _label(what: str, path: str | os.PathLike) -> str:
    """``--config FILE`` or, for an option of a spec (``classes=``), ``classes=FILE``."""
    shown = _shorten(os.fspath(path))
    return f"{what}{shown}" if what.endswith("=") else f"{what} {shown}"


def check_path(path: str | os.PathLike, what: str) -> None:
    """Refuse a path with a component or a total length the file system cannot hold, naming the limit."""
    text = os.fspath(path)
    try:
        name_max = os.pathconf(_existing_parent(Path(text)), "PC_NAME_MAX")
        path_max = os.pathconf(_existing_parent(Path(text)), "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(part)) for part in Path(text).parts), default=0)
    if longest > name_max:
        raise GktError(f"{_label(what, text)}: a name in it is {longest} bytes long, more than the "
                       f"{name_max} its file system allows; give a shorter path")
    if len(os.fsencode(text)) >= path_max:
        raise GktError(f"{_label(what, text)}: the path is {len(os.fsencode(text))} bytes long, more than "
                       f"the {path_max - 1} the system allows; give a shorter path")


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def _shorten(text: str, keep: int = 60) -> str:
    return text if len(text) <= 2 * keep else f"{text[:keep]}…{text[-keep:]} ({len(text)} characters)"


def path_error(exc: OSError, what: str, path: str | os.PathLike) -> GktError:
    """An OSError about ``path`` as one user error naming ``what`` (the option or variable) and the path."""
    text = _label(what, path)
    if exc.errno == errno.ENAMETOOLONG:
        return GktError(f"{text}: the path is too long for its file system; give a shorter path")
    return GktError(f"{text}: cannot read it ({exc.strerror or exc}); check the path and its permissions")


def read_text_input(path: str | os.PathLike, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a small input a user names (``what``: e.g. ``--config FILE``): a regular file or a
    pipe (``<(…)``); a missing path, a directory, a device, binary or over-long content is a clear error."""
    path = Path(path)
    check_path(path, what)
    label = _label(what, path)
    try:
        if path.is_dir():
            raise GktError(f"{label}: is a directory; give a file")
        if not path.exists():
            raise GktError(f"{label}: no such file")
        if not (path.is_file() or path.is_fifo()):
            raise GktError(f"{label}: not a regular file or a pipe; give a file")
        if path.is_fifo() and os.fspath(path) in _PIPES_READ:  # a pipe gives its text once: keep it
            return _PIPES_READ[os.fspath(path)]
        if path.is_fifo():
            raw = _read_pipe(path, limit + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(limit + 1)
    except OSError as exc:
        raise path_error(exc, what, path) from None
    check_size(f"{label}", len(raw), limit, "bytes or more", "give a smaller file")
    if not raw and path.is_fifo():
        raise GktError(f"{label}: a pipe nothing was written to; give a file, or a pipe with a writer (<(…))")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GktError(f"{label}: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); give a text "
                       "file") from None
    if path.is_fifo():
        _PIPES_READ[os.fspath(path)] = text
    return text


def _read_pipe(path: Path, size: int, wait_for_writer: float = 2.0) -> bytes:
    """Up to ``size`` bytes of a pipe, until its writer closes it. A named pipe nobody writes to would block
    an ordinary open forever: it is opened without waiting, and given up after ``wait_for_writer`` seconds
    without a writer (``<(…)`` has one from the start)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    deadline, chunks, total, writer = time.monotonic() + wait_for_writer, [], 0, False
    try:
        while total < size:
            try:
                chunk = os.read(fd, min(1 << 20, size - total))
            except BlockingIOError:  # a writer that has not written yet: wait for it
                writer = True
                select.select([fd], [], [])
                continue
            if chunk:
                writer = True
                chunks.append(chunk)
                total += len(chunk)
            elif writer or time.monotonic() > deadline:
                break  # closed by its writer, or none came
            else:
                time.sleep(0.02)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_yaml(text: str, what: str) -> Any:
    """YAML without aliases (``*name``): an alias may expand exponentially ("billion laughs"), so it is
    refused by name before anything is built from it."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise GktError(f"{what}: line {mark.line + 1}: YAML aliases (*name) are not accepted (they "
                               "can expand without bound); write the values out")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)
    except RecursionError:
        raise GktError(f"{what}: nested too deeply to parse; write it flat") from None


def available_memory(device: Any = None) -> int | None:
    """Bytes of memory a batch can still take: free memory of a CUDA ``device``, else the host's available
    memory (``MemAvailable``); None when unknown."""
    try:
        if device is not None and getattr(device, "type", str(device)) == "cuda":
            import torch

            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None


_BATCHES_CHECKED: set[tuple[Any, ...]] = set()


def check_batch_memory(batch_size: int, shape: tuple[int, ...], device: Any = None,
                       bytes_per_value: int = 4 * BATCH_MEMORY_FACTOR, what: str = "a batch") -> None:
    """Refuse a batch of ``batch_size`` inputs of ``shape`` (channels, height, width) that cannot fit in the
    memory left (``bytes_per_value`` per value: by default :data:`BATCH_MEMORY_FACTOR` float32 copies), saying
    which options lower it. Batches under :data:`BATCH_MEMORY_UNCHECKED` bytes are not checked (no cost)."""
    per_input = bytes_per_value * math.prod(shape)
    key = (batch_size, tuple(shape), str(device), bytes_per_value)
    if batch_size * per_input < BATCH_MEMORY_UNCHECKED or key in _BATCHES_CHECKED:
        return
    free = available_memory(device)
    if free is None or batch_size * per_input <= free:
        # once per batch shape: later, memory the first batches used is held by allocator caches, not lost
        _BATCHES_CHECKED.add(key)
        return
    fits = free // per_input
    size = "×".join(map(str, shape))
    lower = f"lower --batch-size to {fits} or less" if fits else "no --batch-size is small enough"
    need = batch_size * per_input / 2**30
    raise GktError(f"{what} of {batch_size} inputs of {size} needs about {need:.1f} GB of memory but "
                   f"{free / 2**30:.1f} GB is free on {device or 'this machine'}; {lower}, or lower the "
                   "input size (--img-size, or a model spec's ?img_size=N)")
