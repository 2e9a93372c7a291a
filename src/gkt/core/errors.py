"""The project's error type (what went wrong and how to fix it), and which other exceptions are the
user's to fix too (a full disk, a read-only location, too little shared memory for data-loading workers)."""

from __future__ import annotations

import errno
import os


class GktError(Exception):
    """An error caused by user input (bad spec, bad data, missing file): printed without a traceback."""


# OS errors a user fixes by freeing space or choosing another location, with the hint for each.
STORAGE_ERRNOS = {errno.ENOSPC: "free space on that disk or point --out / $GKT_HOME elsewhere",
                  errno.EDQUOT: "free space within your quota or point --out / $GKT_HOME elsewhere",
                  errno.EROFS: "choose a writable --out / $GKT_HOME",
                  errno.EACCES: "fix its permissions or choose another location",
                  errno.EPERM: "fix its permissions or choose another location"}

# How libraries that write through their own C++/Rust code report a failed write (torch.save, safetensors).
FULL_DISK_MESSAGES = ("basic_ios::clear", "PytorchStreamWriter failed", "No space left on device", "os error 28",
                      "file write failed")


# How torch reports a data-loading worker that died, most often of too little shared memory (/dev/shm, 64 MB
# in a default container); its SIGCHLD handler raises these wherever the main process happens to be.
WORKER_DEATH_MESSAGES = ("killed by signal: Bus error", "out of shared memory", "unable to open shared memory",
                         "exited unexpectedly")
WORKER_DEATH_FIX = ("usually shared memory (/dev/shm) or memory ran out: raise /dev/shm (docker run --shm-size=8g), "
                    "or lower --batch-size")


# Locations a command writes to, by the option or variable that moves them (``--out`` is registered by the
# CLI): a storage error names the one holding the failing path instead of a generic list.
LOCATIONS: dict[str, str] = {}


def register_location(label: str, path: str | os.PathLike) -> None:
    LOCATIONS[label] = os.path.abspath(os.path.expanduser(os.fspath(path)))


def _known_locations() -> dict[str, str]:
    """The places gkt and the libraries it drives write to: label → directory."""
    def var(name: str, default: str) -> str:
        return os.path.abspath(os.path.expanduser(os.environ.get(name) or default))

    hf_home = var("HF_HOME", os.path.join(var("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    return {"$GKT_HOME": var("GKT_HOME", "~/.cache/gkt"), "$HF_HOME": hf_home,
            "$HF_DATASETS_CACHE (or $HF_HOME)": var("HF_DATASETS_CACHE", os.path.join(hf_home, "datasets")),
            "$HF_HUB_CACHE (or $HF_HOME)": var("HF_HUB_CACHE", os.path.join(hf_home, "hub")),
            "$TORCH_HOME": var("TORCH_HOME", os.path.join(var("XDG_CACHE_HOME", "~/.cache"), "torch")),
            **LOCATIONS}


def location_of(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(label, directory)`` of the known location holding ``path`` (the innermost), if any."""
    target = os.path.abspath(os.fspath(path))
    found = [(label, root) for label, root in _known_locations().items()
             if target == root or target.startswith(root.rstrip(os.sep) + os.sep)]
    return max(found, key=lambda item: len(item[1])) if found else None


def storage_error(exc: BaseException) -> GktError | None:
    """``exc`` (or an exception it was raised from) as a user error when it is a storage or shared-memory
    problem; else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENAMETOOLONG:  # any path a user gave
            where = str(seen.filename or "a path")
            where = where if len(where) <= 120 else f"{where[:60]}…{where[-40:]} ({len(where)} characters)"
            return GktError(f"{where}: the path is too long (file systems take names of up to 255 bytes "
                            "and paths of up to 4095); give a shorter one")
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            where = f"{seen.filename}: " if seen.filename else ""
            fix = STORAGE_ERRNOS[seen.errno]
            location = location_of(seen.filename) if isinstance(seen.filename, (str, os.PathLike)) else None
            if location is not None:  # name the option or variable that moves it
                fix = fix.replace("--out / $GKT_HOME", location[0]).replace("choose another location",
                                                                             f"point {location[0]} elsewhere")
            return GktError(f"{where}{seen.strerror or seen}; {fix}")
        if isinstance(seen, Exception) and any(m in str(seen) for m in FULL_DISK_MESSAGES):
            return GktError(f"writing a file failed ({str(seen).splitlines()[0][:200]}): the disk is probably full; "
                            f"{STORAGE_ERRNOS[errno.ENOSPC]}")
        if isinstance(seen, Exception) and any(m in str(seen) for m in WORKER_DEATH_MESSAGES):
            fix = "raise the open-file limit (ulimit -n 65536)" if "Too many open files" in str(seen) else \
                WORKER_DEATH_FIX
            return GktError(f"a data-loading worker died ({str(seen).splitlines()[0][:200]}): {fix}")
        seen = seen.__cause__ or seen.__context__
    return None


# How torch reports a file that ``weights_only=True`` refused (a pickle of Python objects): its own advice to
# retry without it must never reach a user.
PICKLE_REFUSED_MESSAGES = ("Weights only load failed", "Unsupported global", "UnpicklingError")


def refused_pickle(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is torch refusing to unpickle a file."""
    import pickle

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, pickle.UnpicklingError) or any(m in str(seen) for m in PICKLE_REFUSED_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
