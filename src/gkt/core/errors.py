"""The project's error type (what went wrong and how to fix it), and which other exceptions are the
user's to fix too (a full disk, a read-only location, too little shared memory for data-loading workers)."""

from __future__ import annotations

import errno


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


def storage_error(exc: BaseException) -> GktError | None:
    """``exc`` (or an exception it was raised from) as a user error when it is a storage or shared-memory
    problem; else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENAMETOOLONG:  # any path a user gave
            where = str(seen.filename or "a path")
            where = where if len(where) <= 120 else f"{where[:60]}…{where[-40:]} ({len(where)} characters)"
            return GktError(f"{where}: the path is too long (file systems take names of up to 255 bytes and paths of up "
                            "to 4095); give a shorter one")
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            where = f"{seen.filename}: " if seen.filename else ""
            return GktError(f"{where}{seen.strerror or seen}; {STORAGE_ERRNOS[seen.errno]}")
        if isinstance(seen, Exception) and any(m in str(seen) for m in FULL_DISK_MESSAGES):
            return GktError(f"writing a file failed ({str(seen).splitlines()[0][:200]}): the disk is probably full; "
                            f"{STORAGE_ERRNOS[errno.ENOSPC]}")
        if isinstance(seen, Exception) and any(m in str(seen) for m in WORKER_DEATH_MESSAGES):
            fix = "raise the open-file limit (ulimit -n 65536)" if "Too many open files" in str(seen) else \
                WORKER_DEATH_FIX
            return GktError(f"a data-loading worker died ({str(seen).splitlines()[0][:200]}): {fix}")
        seen = seen.__cause__ or seen.__context__
    return None
