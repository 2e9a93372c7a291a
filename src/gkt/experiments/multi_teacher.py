"""Multi-teacher studies: single-teacher runs, sequential, parallel and soup over one student, and the
Table-4 summary.

Every transfer run (a student, one or several teachers, a config, a transfer and a test set) is a grid job
(:func:`gkt.experiments.grid.run_study`) in the results store of a run cache: its config is the content
identity of all of these (model weights, data fingerprints), its run directory is named by the job's key.
So one single-teacher run serves as the single-teacher baseline, the first sequential step and a soup
ingredient; two processes never train the same run twice; an interrupted run resumes from its last epoch.
"""

from __future__ import annotations

import csv
import functools
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.io import cache_home, read_json, write_csv
from gkt.core.registry import Registry
from gkt.data.datasets import ImageDataset
from gkt.engine.loop import predict_logits
from gkt.engine.metrics import correctness, knowledge_gain_loss
from gkt.engine.predictions import dataset_identity
from gkt.experiments.grid import (
    STORE_NAME,
    LocalBackend,
    RayBackend,
    ResultsStore,
    failed_rows,
    job_key,
    run_study,
)
from gkt.models.checkpoint import load_checkpoint
from gkt.models.classifier import Classifier
from gkt.reporting.multi_teacher import write_result
from gkt.reporting.tables import mean_std
from gkt.transfer.evaluation import transfer_metrics
from gkt.transfer.multi import ORDERS, MultiResult, check_teachers, parallel_method, weight_soup
from gkt.transfer.state import load_state
from gkt.transfer.trainer import TransferConfig, TransferOutcome, run_transfer

log = logging.getLogger(__name__)

RUN_CACHE_FORMAT = "gkt-transfer-run/4"  # /4: data keyed by content; /3: the KL as one fused kl_div


@dataclass(frozen=True)
class TransferSetup:
    """What every run of one multi-teacher study shares: data, config (seed included), device, run cache."""

    transfer_set: ImageDataset
    test_set: ImageDataset
    config: TransferConfig
    device: torch.device
    cache_dir: Path = field(default_factory=lambda: cache_home() / "transfer-runs")

    @functools.cached_property
    def transfer_ids(self) -> tuple[str, str]:
        """The transfer and test sets' identities, images' contents included (the run cache's data key)."""
        return dataset_identity(self.transfer_set), dataset_identity(self.test_set)

    def correct(self, model: Classifier) -> torch.Tensor:
        """``bool [N]``: the model's correctness on the test set."""
        return correctness(predict_logits(model, self.test_set, self.device, desc="evaluate"), self.test_set.labels)


def read_history(path: Path) -> list[dict[str, Any]]:
    """A run's ``metrics.csv`` back as numbers (cells a row lacks are left out)."""
    with open(path, newline="") as f:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class TransferRuns:
    """The run cache as a grid: :meth:`job` describes a run by content, :meth:`__call__` runs one (the job
    function, resolving the job's models by identity among those registered), :meth:`run` runs a batch
    through :func:`run_study` and loads the outcomes."""

    def __init__(self, setup: TransferSetup, backend: LocalBackend | RayBackend | None = None):
        self.setup, self.backend = setup, backend or LocalBackend(1, torch.get_num_threads())
        self.models: dict[str, Classifier] = {}

    def job(self, student: Classifier, teachers: Sequence[Classifier], config: TransferConfig) -> dict[str, Any]:
        for model in (student, *teachers):
            self.models.setdefault(model.identity(), model)
        return {"format": RUN_CACHE_FORMAT, "student": student.identity(),
                "teachers": [t.identity() for t in teachers], "config": config.to_dict(),
                "transfer_set": self.setup.transfer_ids[0], "test_set": self.setup.transfer_ids[1],
                "device": self.setup.device.type}

    def run_dir(self, job: dict[str, Any]) -> Path:
        return self.setup.cache_dir / job_key(job)

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        student = self.models[job["student"]]
        teachers = [self.models[t] for t in job["teachers"]]
        run_dir = self.run_dir(job)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "final.json").is_file():  # a kill after saving the student, before final.json
            for leftover in ("student.safetensors", "student.json"):
                (run_dir / leftover).unlink(missing_ok=True)
        fix = (f"delete {run_dir} (gkt's cache of this unfinished transfer) and run the command again: that "
               "transfer then starts from its first epoch")
        resume = load_state(run_dir, fix) if (run_dir / "state.pt").is_file() else None
        config = TransferConfig(**{**job["config"], "augment": tuple(job["config"]["augment"])})
        try:
            outcome = run_transfer(student, teachers[0] if len(teachers) == 1 else teachers,
                                   self.setup.transfer_set, self.setup.test_set, config, self.setup.device,
                                   run_dir, resume=resume)
        except GktError as exc:  # a cached state that does not fit (the loop cannot know it is a cache)
            if resume is None or "saved training state" not in str(exc):
                raise
            raise GktError(str(exc).replace("start it again", fix)) from None
        return {k: v for k, v in outcome.final.items() if isinstance(v, (int, float, str, bool))}

    def finished(self, job: dict[str, Any]) -> TransferOutcome | None:
        """The cached outcome of ``job``, or ``None`` when it has none yet or a damaged one (then it runs
        again: its ``final.json`` is removed, its state kept for resuming)."""
        run_dir = self.run_dir(job)
        if not (run_dir / "final.json").is_file():
            return None
        try:
            final = read_json(run_dir / "final.json")
            if not isinstance(final, dict) or final.get("status") != "ok":
                raise ValueError("final.json records no finished run")
            return TransferOutcome(load_checkpoint(run_dir / "student"), read_history(run_dir / "metrics.csv"),
                                   final, run_dir / "student.safetensors")
        except (GktError, ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("%s: a cached transfer run is damaged (%s): it runs again", run_dir,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            (run_dir / "final.json").unlink(missing_ok=True)
            return None

    def run(self, jobs: Sequence[dict[str, Any]]) -> list[TransferOutcome]:
        """The outcomes of ``jobs``: finished runs are loaded, the others run (failed or damaged ones again)."""
        store = ResultsStore(self.setup.cache_dir / STORE_NAME)
        outcomes = [self.finished(job) for job in jobs]
        lost = [job for job, outcome in zip(jobs, outcomes) if outcome is None]
        store.forget([job_key(job) for job in lost])  # a run removed from (or damaged in) the cache runs again
        counts = run_study(self, jobs, store, self.backend, retry_failed=True, desc="transfer runs")
        if counts.failed:
            raise GktError(f"transfer run failed: {failed_rows(store, counts.failed)[0].metrics.get('error')}")
        outcomes = [outcome or self.finished(job) for job, outcome in zip(jobs, outcomes)]
        if any(outcome is None for outcome in outcomes):
            raise GktError(f"a cached transfer run in {self.setup.cache_dir} was damaged while this command ran; "
                           "run the command again")
        return outcomes  # type: ignore[return-value]


class MultiTeacherStudy:
    """A student, a set of teachers and one :class:`TransferSetup`: single-teacher runs and the
    multi-teacher modes, sharing the test-set evaluations of the student and the teachers."""

    def __init__(self, student: Classifier, teachers: Sequence[Classifier], setup: TransferSetup,
                 order: str = "given", backend: LocalBackend | RayBackend | None = None):
        check_teachers(student, teachers)
        ORDERS.check(order)
        self.student, self.teachers, self.setup, self.order = student, list(teachers), setup, order
        self.correct_student = setup.correct(student)
        self.correct_teachers = torch.stack([setup.correct(t) for t in self.teachers])  # [K, N]
        self.acc_student = self.correct_student.double().mean().item()
        self.acc_teachers = self.correct_teachers.double().mean(1).tolist()
        self.runs = TransferRuns(setup, backend)
        self._outcomes: dict[str, TransferOutcome] = {}

    def transfers(self, requests: Sequence[tuple[Classifier, Sequence[Classifier], TransferConfig | None]]
                  ) -> list[TransferOutcome]:
        """Cached transfer runs (student, teachers, config or the setup's), run as one grid, memoised."""
        jobs = [self.runs.job(s, t, c or self.setup.config) for s, t, c in requests]
        todo = list({job_key(j): j for j in jobs if job_key(j) not in self._outcomes}.values())
        self._outcomes.update(zip(map(job_key, todo), self.runs.run(todo)))
        return [self._outcomes[job_key(j)] for j in jobs]

    def transfer(self, student: Classifier, teachers: Sequence[Classifier],
                 config: TransferConfig | None = None) -> TransferOutcome:
        return self.transfers([(student, teachers, config)])[0]

    def metrics(self, correct_after: torch.Tensor, correct_teacher: torch.Tensor | None = None) -> dict[str, float]:
        """Transfer metrics against the original student; flips against ``correct_teacher`` (default: the
        teacher set, where a sample counts as known when any teacher gets it right)."""
        teacher = self.correct_teachers.any(0) if correct_teacher is None else correct_teacher
        return transfer_metrics(self.setup.test_set.labels, teacher, self.correct_student, correct_after)

    def single(self) -> list[dict[str, Any]]:
        """One single-teacher transfer per teacher, each from the original student."""
        outcomes = self.transfers([(self.student, [t], None) for t in self.teachers])
        return [{"teacher": teacher.name, "acc_teacher": self.acc_teachers[k],
                 **self.metrics(self.setup.correct(outcome.model), self.correct_teachers[k]),
                 "run": str(outcome.checkpoint.parent)}
                for k, (teacher, outcome) in enumerate(zip(self.teachers, outcomes))]

    def sequential(self) -> MultiResult:
        """One transfer after another; each step's result is the next step's student (and frozen copy)."""
        order = ORDERS[self.order](self.acc_teachers)
        model, correct_prev, steps = self.student, self.correct_student, []
        for position, k in enumerate(order, 1):
            outcome = self.transfer(model, [self.teachers[k]])
            model, correct = outcome.model, self.setup.correct(outcome.model)
            gain_prev, loss_prev = knowledge_gain_loss(correct_prev, correct)
            metrics = self.metrics(correct)
            steps.append({"step": position, "teacher": self.teachers[k].name, "acc_teacher": self.acc_teachers[k],
                          **metrics, "delta_prev": metrics["acc"] - correct_prev.double().mean().item(),
                          "gain_prev": gain_prev, "loss_prev": loss_prev, "run": str(outcome.checkpoint.parent)})
            correct_prev = correct
        return MultiResult("sequential", model, self.metrics(correct_prev), steps,
                           {"order": self.order, "teachers": [self.teachers[k].name for k in order]})

    def parallel(self) -> MultiResult:
        """All teachers in one run with the K-teacher data partition; reports how many transfer-set samples
        each model (frozen student first) is assigned."""
        config = replace(self.setup.config, method=parallel_method(self.setup.config.method))
        outcome = self.transfer(self.student, self.teachers, config)
        method = config.build_method()
        data, device = self.setup.transfer_set, self.setup.device
        frozen = predict_logits(self.student, data, device, desc="student (transfer set)")
        teachers = torch.stack([predict_logits(t, data, device, desc="teacher (transfer set)") for t in self.teachers], 1)
        sources = method.sources(frozen, teachers, data.labels)
        counts = torch.bincount(sources, minlength=len(self.teachers) + 1).tolist()
        names = [f"student {self.student.name} (frozen)"] + [t.name for t in self.teachers]
        metrics = self.metrics(self.setup.correct(outcome.model))
        return MultiResult("parallel", outcome.model, metrics,
                           [{"teachers": " + ".join(t.name for t in self.teachers), **metrics,
                             "run": str(outcome.checkpoint.parent)}],
                           {"method": config.method, "assigned": dict(zip(names, counts)), "transfer_set_size": len(data)})

    def soup(self) -> MultiResult:
        """One transfer per teacher from the original student, then the uniform weight average."""
        outcomes = self.transfers([(self.student, [teacher], None) for teacher in self.teachers])
        model = weight_soup([o.model for o in outcomes], reference=self.student)
        steps = [{"teacher": t.name, **self.metrics(self.setup.correct(o.model), self.correct_teachers[k]),
                  "run": str(o.checkpoint.parent)} for k, (t, o) in enumerate(zip(self.teachers, outcomes))]
        return MultiResult("soup", model, self.metrics(self.setup.correct(model)), steps)


MODES: Registry[Callable[[MultiTeacherStudy], MultiResult]] = Registry("multi-teacher mode")
MODES.update({"sequential": MultiTeacherStudy.sequential, "parallel": MultiTeacherStudy.parallel,
              "soup": MultiTeacherStudy.soup})


def table_row(singles: Sequence[dict[str, Any]], results: dict[str, MultiResult]) -> dict[str, float]:
    """One seed's Table-4 row: single-teacher Δtransf mean/min/max, then each mode's Δtransf."""
    deltas = [row["delta_transf"] for row in singles]
    row = {"single_mean": statistics.fmean(deltas), "single_min": min(deltas), "single_max": max(deltas),
           **{mode: result.metrics["delta_transf"] for mode, result in results.items()}}
    if "sequential" in results:
        row["sequential_minus_best_single"] = row["sequential"] - row["single_max"]
    return row


def aggregate_rows(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{column: {mean, std, n}}`` over seeds (sample std; 0 for one seed)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = {}
    for column in columns:
        values = [row[column] for row in rows if column in row]
        mean, std = mean_std(values)
        out[column] = {"mean": mean, "std": std, "n": len(values)}
    return out


def summary_entry(student: Classifier, acc_student: float, teachers: Sequence[str], method: str,
                  per_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    """The JSON record of one student's Table-4 line: per-seed rows and their aggregate."""
    rows = list(per_seed.values())
    beats = sum(row["sequential_minus_best_single"] > 0 for row in rows if "sequential_minus_best_single" in row)
    return {"student": student.name, "acc_student": acc_student, "teachers": list(teachers), "method": method,
            "seeds": list(per_seed), "per_seed": {str(s): r for s, r in per_seed.items()},
            "aggregate": aggregate_rows(rows), "sequential_beats_best_single_seeds": beats}


def run_multi_teacher(study: MultiTeacherStudy, modes: Sequence[str], out_dir: Path
              ) -> tuple[list[dict[str, Any]], dict[str, MultiResult]]:
    """The single-teacher runs and the requested modes; writes ``single.csv`` and one directory per mode."""
    if "parallel" in modes:  # the single runs and the parallel run are independent: one grid
        config = replace(study.setup.config, method=parallel_method(study.setup.config.method))
        study.transfers([(study.student, [t], None) for t in study.teachers] + [(study.student, study.teachers, config)])
    singles = study.single()
    write_csv(out_dir / "single.csv", singles)
    results = {}
    for mode in modes:
        results[mode] = MODES[mode](study)
        write_result(results[mode], out_dir / mode)
    return singles, results
