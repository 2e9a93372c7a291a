"""A training run's saved state (``state.pt`` in its run directory): written after each epoch with its
checksum, read back for ``--resume`` only when intact and of the expected kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.hashing import file_sha256
from gkt.core.io import atomic_path, read_json, write_json

STATE_FILE = "state.pt"
STATE_DIGEST = "state.sha256.json"  # beside state.pt: its SHA-256 (and the one before, should a save be cut short)


def save_training_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state.pt`` atomically, its checksum first (torch's zip reader does not notice bytes changed in
    place: a damaged state must not resume into other weights)."""
    digest_path = run_dir / STATE_DIGEST
    previous = read_json(digest_path).get("sha256") if digest_path.is_file() else None
    with atomic_path(run_dir / STATE_FILE) as tmp:
        torch.save(state, tmp)
        write_json(digest_path, {"sha256": file_sha256(tmp), "previous": previous})


def load_training_state(run_dir: str | Path, state_format: str, what: str, fix: str = "start it again"
                        ) -> dict[str, Any]:
    """The last epoch's training state in ``run_dir`` (a ``what``, e.g. "transfer run"), when intact and of
    ``state_format``; ``fix`` ends the error of a damaged one (for a run gkt caches: its folder to delete)."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise GktError(f"{run_dir}: no {STATE_FILE} (a {what} writes it after each finished epoch)")
    digest_path = Path(run_dir) / STATE_DIGEST
    if digest_path.is_file():
        try:
            recorded = read_json(digest_path)
            accepted = {recorded.get("sha256"), recorded.get("previous")} - {None}
        except (ValueError, AttributeError):
            accepted = set()
        if file_sha256(path) not in accepted:
            raise GktError(f"{path}: the saved training state fails its checksum ({STATE_DIGEST}): it is damaged, "
                           f"so the run cannot be resumed: {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty, or a pickle that weights_only refuses: each its own error type
        raise GktError(f"{path}: cannot read the saved training state ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else 'no details'}); it is damaged, so the run "
                       f"cannot be resumed: {fix}") from None
    if not isinstance(state, dict) or state.get("format") != state_format:
        raise GktError(f"{path}: not the state of a gkt {what}; the run cannot be resumed: {fix}")
    bad = next((key for key, tensor in _tensors(state) if tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())), None)
    if bad is not None:  # weights or optimizer moments that diverged: resuming would only carry the NaN on
        raise GktError(f"{path}: the saved training state holds NaN or infinite values (in {bad}); the run "
                       f"cannot be resumed: {fix}")
    return state


def _tensors(value: Any, key: str = "state") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested state (dicts, lists), with the path of keys to it."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{key}[{i}]")
