"""A transfer run's saved training state: written after each epoch with its checksum, read back for
``--resume`` only when intact and made with the same models and data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.hashing import file_sha256
from gkt.core.io import atomic_path, read_json, write_json
from gkt.models.classifier import Classifier

STATE_FORMAT = "gkt-transfer-state/1"
STATE_DIGEST = "state.sha256.json"  # beside state.pt: its SHA-256 (and the one before, should a save be cut short)


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state.pt`` atomically, its checksum first (torch's zip reader does not notice bytes changed in
    place: a damaged state must not resume into other weights)."""
    digest_path = run_dir / STATE_DIGEST
    previous = read_json(digest_path).get("sha256") if digest_path.is_file() else None
    with atomic_path(run_dir / "state.pt") as tmp:
        torch.save(state, tmp)
        write_json(digest_path, {"sha256": file_sha256(tmp), "previous": previous})


def load_state(run_dir: str | Path) -> dict[str, Any]:
    """The last epoch's training state of a transfer run directory (for ``--resume``)."""
    path = Path(run_dir) / "state.pt"
    if not path.is_file():
        raise GktError(f"{run_dir}: no state.pt (a transfer run writes it after each finished epoch)")
    digest_path = Path(run_dir) / STATE_DIGEST
    if digest_path.is_file():
        try:
            recorded = read_json(digest_path)
            accepted = {recorded.get("sha256"), recorded.get("previous")} - {None}
        except (ValueError, AttributeError):
            accepted = set()
        if file_sha256(path) not in accepted:
            raise GktError(f"{path}: the saved training state fails its checksum ({STATE_DIGEST}): it is damaged, "
                           "so the run cannot be resumed: start it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty, or a pickle that weights_only refuses: each its own error type
        raise GktError(f"{path}: cannot read the saved training state ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200] if str(exc) else 'no details'}); it is damaged, so the run "
                       "cannot be resumed: start it again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "history" not in state:
        raise GktError(f"{path}: not a gkt transfer state; the run cannot be resumed: start it again")
    return state


def check_same_inputs(recorded: dict[str, Any] | None, current: dict[str, Any], student: Classifier,
                      teachers: Sequence[Classifier], epochs: int, done: int) -> None:
    """A run resumes only with the models and data it started with (a spec may name other weights since, a
    data directory other images): else its epochs would mix two runs; and for at least the epochs it has
    done. States written before these checks record no inputs."""
    if done > epochs:
        raise GktError(f"the run to resume has done {done} epochs; give --epochs {done} or more (it extends a run, "
                       "it cannot shorten one)")
    if recorded is None or recorded == current:
        return
    changed = [m.name for m, old, new in zip([student, *teachers], [recorded["student"], *recorded["teachers"]],
                                             [current["student"], *current["teachers"]]) if old != new]
    if recorded.get("data") != current["data"]:
        changed.append("the data (its transfer or test images)")
    raise GktError(f"the run to resume started with other inputs than {', '.join(changed) or 'these'} are now "
                   "(other weights, preprocessing, classes or images); resuming would mix two runs: start a new run, "
                   "or resume with the data options (e.g. --data-dir) the run had")
