"""Tensor files gkt keeps as caches, with a checksum: written atomically, read back only when intact."""

from __future__ import annotations

import os
from typing import Any

import torch

from gkt.core.hashing import tensor_hash
from gkt.core.io import atomic_path


def save_checked(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> None:
    """``tensors`` as a safetensors file with their SHA-256 (:func:`tensor_hash`) in its metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**(metadata or {}), "sha256": tensor_hash(tensors, 64)})


def load_checked(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and metadata of a :func:`save_checked` file; ``None`` when it is missing, unreadable or
    fails its checksum (damaged or changed: the caller computes it again)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 — safetensors raises its own error types for damaged files
        return None
    return (tensors, metadata) if metadata.get("sha256") == tensor_hash(tensors, 64) else None
