"""Device, seeding and thread settings."""

from __future__ import annotations

import random

import numpy as np
import torch

from gkt.core.errors import GktError


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GktError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise GktError(f"--device {device}: gkt runs on auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GktError(f"device {device!r} was requested but CUDA is not available; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with ``seed`` for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
