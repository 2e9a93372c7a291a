"""Experiment tracking: per-epoch and final metrics to TensorBoard and/or MLflow (CSV files are always
written by the runs themselves). Backends register in :data:`TRACKERS`; ``--track tensorboard mlflow``
opens them for a run directory, and :class:`Trackers` fans every call out to all of them."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gkt.core.errors import GktError
from gkt.core.registry import Registry


@dataclass(frozen=True)
class TrackingContext:
    """Where and under which name a run is tracked."""

    run_dir: Path
    experiment: str  # the verb, e.g. "transfer"
    mlflow_uri: str | None = None


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_job(self, name: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        """One finished job of a study: its config and final metrics as a record of its own."""

    def close(self, status: str) -> None: ...


TRACKERS: Registry[Callable[[TrackingContext], Tracker]] = Registry("tracker")
register_tracker = TRACKERS.register


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts → ``a.b`` keys; every value as text (lists comma-joined), for tracker params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return flat


def numeric(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``metrics`` (nested dicts flattened with ``/``); bools and text left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out |= numeric(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise GktError(f"--track needs {module.split('.')[0]}: install gkt with the 'track' extra "
                       f"(uv sync --extra track, or pip install 'gkt[track]')") from exc


@register_tracker("tensorboard")
class TensorBoardTracker:
    """Scalars and the flattened config (a text table) in ``RUN_DIR/tensorboard``; study jobs get a
    sub-directory ``jobs/<name>`` each."""

    def __init__(self, context: TrackingContext):
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.root = context.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.root))
        self.writer_class = SummaryWriter

    @staticmethod
    def _table(params: dict[str, Any]) -> str:
        return "| key | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in flatten(params).items())

    def log_params(self, params: dict[str, Any]) -> None:
        self.writer.add_text("config", self._table(params), 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_job(self, name: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        with self.writer_class(log_dir=str(self.root / "jobs" / name)) as writer:
            writer.add_text("config", self._table(params), 0)
            for key, value in metrics.items():
                writer.add_scalar(key, value, 0)

    def close(self, status: str) -> None:
        self.writer.close()


@register_tracker("mlflow")
class MlflowTracker:
    """One MLflow run per gkt run in the experiment named after the verb; study jobs are child runs.
    The store is ``--mlflow-uri`` (e.g. ``sqlite:///runs/mlflow.db``), default ``file:RUN_DIR/mlruns``
    (MLflow's file store, which MLflow 3 only opens with ``MLFLOW_ALLOW_FILE_STORE=true``: set here)."""

    def __init__(self, context: TrackingContext):
        _require("mlflow")
        from mlflow.tracking import MlflowClient

        uri = context.mlflow_uri or f"file:{(context.run_dir / 'mlruns').resolve()}"
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(context.experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(context.experiment)
        self.run_id = self.client.create_run(self.experiment_id, run_name=context.run_dir.name,
                                             tags={"gkt.run_dir": str(context.run_dir)}).info.run_id

    def _log(self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
             step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        stamp = int(time.time() * 1000)
        self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flatten(params or {}).items()],
                              metrics=[Metric(k, v, stamp, step) for k, v in (metrics or {}).items()])

    def log_params(self, params: dict[str, Any]) -> None:
        self._log(self.run_id, params=params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._log(self.run_id, metrics=metrics, step=step)

    def log_job(self, name: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        child = self.client.create_run(self.experiment_id, run_name=name,
                                       tags={"mlflow.parentRunId": self.run_id}).info.run_id
        self._log(child, params=params, metrics=metrics)
        self.client.set_terminated(child)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class Trackers:
    """All trackers of a run as one; without any, every call does nothing."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log_params(self, params: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_params(params)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        values = numeric(metrics)
        for tracker in self.trackers:
            tracker.log_metrics(values, step)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """A transfer history row (``on_epoch`` of ``run_transfer``), at its epoch as the step."""
        self.log_metrics({k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]))

    def log_job(self, name: str, params: dict[str, Any], metrics: dict[str, Any]) -> None:
        values = numeric(metrics)
        for tracker in self.trackers:
            tracker.log_job(name, params, values)


def open_trackers(names: list[str] | None, context: TrackingContext) -> list[Tracker]:
    TRACKERS.check(sorted(names or ()))
    return [TRACKERS[name](context) for name in dict.fromkeys(names or ())]
