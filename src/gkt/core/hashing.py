"""Stable content hashes of JSON-able objects and tensors."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
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


def hash_order(keys: Sequence[str]) -> torch.Tensor:
    """Positions of ``keys`` sorted by a hash of each key: a seeded-random order in which every key keeps its
    place relative to the others whatever other keys are added or removed (a sample drawn from its head
    does not move when a few keys drop out)."""
    digests = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") >> 1 for k in keys]
    return torch.tensor(digests, dtype=torch.long).argsort(stable=True)
