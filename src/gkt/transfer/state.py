"""A transfer run's saved training state (:mod:`gkt.engine.state`), read back for ``--resume`` only when
made with the same models and data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gkt.core.errors import GktError
from gkt.engine.state import load_training_state
from gkt.models.classifier import Classifier

STATE_FORMAT = "gkt-transfer-state/1"


def load_state(run_dir: str | Path, fix: str = "start it again") -> dict[str, Any]:
    """The last epoch's training state of a transfer run directory (for ``--resume``); ``fix`` ends the error
    of a damaged one."""
    state = load_training_state(run_dir, STATE_FORMAT, "transfer run", fix)
    if "history" not in state:
        raise GktError(f"{run_dir}: its state.pt is not a gkt transfer state; the run cannot be resumed: "
                       f"{fix}")
    return state


def check_same_inputs(recorded: dict[str, Any] | None, current: dict[str, Any], student: Classifier,
                      teachers: Sequence[Classifier], epochs: int, done: int) -> None:
    """A run resumes only with the models and data it started with (a spec may name other weights since, a
    data directory other images): else its epochs would mix two runs; and for at least the epochs it has
    done. States written before these checks record no inputs."""
    if done > epochs:
        raise GktError(f"the run to resume has done {done} epochs; give --epochs {done} or more (it extends a run, "
                       "it cannot shorten one)")
    old, new = (recorded or {}).get("settings"), current.get("settings")
    if old is not None and new is not None and old != new:  # states written before settings were recorded: none
        diff = [f"{k} {new.get(k)!r} (the run used {old.get(k)!r})" for k in sorted({*old, *new})
                if old.get(k) != new.get(k)]
        raise GktError(f"the run to resume was trained with other settings than {'; '.join(diff)}; resuming would mix "
                       "two runs: resume with the run's settings (the CLI's --resume takes them from the run), or "
                       "start a new run")
    recorded = None if recorded is None else {k: v for k, v in recorded.items() if k != "settings"}
    current = {k: v for k, v in current.items() if k != "settings"}
    if recorded is None or recorded == current:
        return
    changed = [m.name for m, old, new in zip([student, *teachers], [recorded["student"], *recorded["teachers"]],
                                             [current["student"], *current["teachers"]]) if old != new]
    if recorded.get("data") != current["data"]:
        changed.append("the data (its transfer or test images)")
    raise GktError(f"the run to resume started with other inputs than {', '.join(changed) or 'these'} are now "
                   "(other weights, preprocessing, classes or images); resuming would mix two runs: start a new run, "
                   "or resume with the data options (e.g. --data-dir) the run had")
