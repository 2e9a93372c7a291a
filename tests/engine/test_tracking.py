"""Experiment tracking: a transfer's params and per-epoch metrics in MLflow and TensorBoard, study jobs
as child runs in an SQLite store, a clear error without the packages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import fmnist_dir, write_model

from gkt.cli import main
from gkt.core.errors import GktError
from gkt.engine.tracking import Trackers, TrackingContext, flatten, numeric, open_trackers

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def test_transfer_tracked_in_mlflow_and_tensorboard(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = fmnist_dir(tmp_path / "fmnist", 40)
    student, teacher = write_model(tmp_path / "student", 1), write_model(tmp_path / "teacher", 2, hidden=8)
    out = tmp_path / "runs"
    assert main(["transfer", "--student", student, "--teacher", teacher, "--data-dir", str(data), "--fraction", "1.0",
                 "--batch-size", "8", "--lr", "0.05", "--epochs", "2", "--threads", "1", "--out", str(out),
                 "--track", "mlflow", "tensorboard"]) == 0
    (run_dir,) = out.iterdir()

    client = MlflowClient(tracking_uri=f"file:{run_dir / 'mlruns'}")
    experiment = client.get_experiment_by_name("transfer")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    params = run.data.params
    assert params["student"] == student and params["teacher"] == teacher and params["epochs"] == "2"
    assert params["lr"] == "0.05" and params["command"] == "transfer" and params["method"] == "kl-dp"
    acc = client.get_metric_history(run.info.run_id, "acc")
    assert [m.step for m in sorted(acc, key=lambda m: m.step)] == [0, 1, 2]
    assert {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")} == {1, 2}
    final = (run_dir / "final.json").read_text()
    assert f'"acc": {run.data.metrics["final/acc"]}' in final and "final/partition_quality/samples_to_teacher" in \
        run.data.metrics

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("acc")] == [0, 1, 2]
    assert [e.value for e in events.Scalars("acc")] == pytest.approx([m.value for m in sorted(acc, key=lambda m: m.step)])
    assert "final/delta_transf" in events.Tags()["scalars"]
    assert "config" in {t.split("/")[0] for t in events.Tags()["tensors"]}


def test_study_jobs_as_child_runs_in_sqlite(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tracker,) = open_trackers(["mlflow"], TrackingContext(tmp_path / "study-1", "study", uri))
    trackers = Trackers([tracker])
    trackers.log_params({"command": "study", "students": ["zoo:a", "zoo:b"], "grid": {"lr": [0.1, 0.2]}})
    trackers.log_job("job1", {"student": "zoo:a", "lr": 0.1}, {"acc": 0.5, "status": "ok", "flag": True, "pq": {"x": 1}})
    trackers.log_metrics({"jobs_done": 1}, 0)
    tracker.close("FINISHED")
    client = MlflowClient(tracking_uri=uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("study").experiment_id])}
    assert set(runs) == {"study-1", "job1"}
    parent, child = runs["study-1"], runs["job1"]
    assert parent.data.params["students"] == "zoo:a,zoo:b" and parent.data.params["grid.lr"] == "0.1,0.2"
    assert parent.data.metrics == {"jobs_done": 1.0}
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.metrics == {"acc": 0.5, "pq/x": 1.0} and child.data.params["lr"] == "0.1"


def test_flatten_and_numeric() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "1,2", "d": "None"}
    assert numeric({"a": 1, "b": float("nan"), "c": True, "d": "x", "e": {"f": 2.5}}) == {"a": 1.0, "e/f": 2.5}


def test_missing_package_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(GktError, match="--track needs mlflow: install gkt with the 'track' extra"):
        open_trackers(["mlflow"], TrackingContext(tmp_path, "transfer"))
    with pytest.raises(GktError, match="unknown tracker 'wandb'; known: mlflow, tensorboard"):
        open_trackers(["wandb"], TrackingContext(tmp_path, "transfer"))


def test_multi_teacher_runs_tracked_as_jobs(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = fmnist_dir(tmp_path / "fmnist", 40)
    student = write_model(tmp_path / "student", 1)
    teachers = [write_model(tmp_path / f"teacher{i}", 2 + i, hidden=8) for i in range(2)]
    out = tmp_path / "runs"
    assert main(["transfer", "--student", student, "--teacher", teachers[0], "--teacher", teachers[1], "--multi",
                 "soup", "--data-dir", str(data), "--fraction", "1.0", "--batch-size", "8", "--epochs", "1",
                 "--threads", "1", "--out", str(out), "--track", "tensorboard"]) == 0
    (run_dir,) = out.iterdir()
    jobs = run_dir / "tensorboard" / "jobs"
    assert sorted(p.name for p in jobs.iterdir()) == ["seed0-single0", "seed0-single1", "seed0-soup"]
    events = EventAccumulator(str(jobs / "seed0-soup"))
    events.Reload()
    soup = json.loads((run_dir / "seed0" / "soup" / "final.json").read_text())
    assert events.Scalars("acc")[0].value == pytest.approx(soup["acc"])
