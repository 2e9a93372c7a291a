"""Device, seeding and thread settings."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gkt.core.errors import GktError

log = logging.getLogger(__name__)


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        warning = unusable_gpu_warning()
        if warning:
            log.warning(warning)
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GktError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise GktError(f"--device {device}: gkt runs on auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GktError(f"device {device!r} was requested but CUDA is not available"
                       f"{': ' + unusable_gpu_warning() if unusable_gpu_warning() else ''}; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with ``seed`` for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_threads_chosen = False  # set_threads was given a count (--threads): keep it


def set_threads(threads: int | None) -> None:
    """Torch's intra-op threads for this process (``None``: torch's default, all CPUs)."""
    global _threads_chosen
    if threads:
        torch.set_num_threads(threads)
        _threads_chosen = True


_cpu_share: int | None = None  # set_cpu_share: the CPUs of a study worker


def set_cpu_share(cpus: int) -> None:
    """This process may use ``cpus`` CPUs (a study worker's share of the machine): as many torch threads,
    and its decoding workers come out of the same share (:func:`available_cpus`)."""
    global _cpu_share
    _cpu_share = max(1, cpus)
    torch.set_num_threads(_cpu_share)


def available_cpus() -> int:
    """The CPUs this process may run on (its share of them in a study worker)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, _cpu_share) if _cpu_share else cpus


@contextlib.contextmanager
def threads_beside(processes: int) -> Iterator[None]:
    """For the block, at most the CPUs that ``processes`` busy processes beside this one leave (at least one)
    as torch threads, unless :func:`set_threads` chose the count; restored afterwards. Decoding workers and a
    CPU model that each want every core slow each other down (an analysis on 2 cores: half the speed)."""
    previous = torch.get_num_threads()
    share = max(1, available_cpus() - processes)
    if not processes or _threads_chosen or share >= previous:
        yield
        return
    torch.set_num_threads(share)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` on ``device`` (``None``: full fp32); ``auto`` is bf16 on a
    CUDA GPU that supports it, else fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision not in PRECISIONS:
        raise GktError(f"unknown precision {precision!r}; use one of auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise GktError("fp16 autocast needs a CUDA device; on CPU use --precision bf16 or fp32")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """A context running forward passes in ``precision`` (see :func:`autocast_dtype`)."""
    dtype = autocast_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version (``None`` without NVIDIA hardware)."""
    try:
        text = Path(NVIDIA_DRIVER_FILE).read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]*)", text)
    return match.group(1) if match else "unknown"


def unusable_gpu_warning() -> str | None:
    """A warning when NVIDIA GPUs are present but this torch build cannot use them (e.g. its CUDA needs a
    newer driver), so ``--device auto`` is about to run on CPU; ``None`` otherwise."""
    if torch.cuda.is_available():
        return None
    driver = nvidia_driver_version()
    if driver is None or torch.version.cuda is None:
        return None
    return (f"an NVIDIA GPU is present (driver {driver}) but this torch build (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}) cannot use it, so gkt runs on the CPU; install an NVIDIA driver that supports "
            f"CUDA {torch.version.cuda}, or a torch build for the CUDA version your driver supports")
