"""Stable content hashes of JSON-able objects and tensors."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short SHA-256 of a JSON-serialisable object (keys sorted), for cache keys."""
    payload = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def tensor_hash(tensors: dict[str, torch.Tensor], length: int = 16) -> str:
    """Hash of a state dict's contents (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:length]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
