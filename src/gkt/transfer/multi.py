"""Multi-teacher transfer (paper §4.3, §5.2, Tables 4 and 9, Fig. 11; SPEC §4): sequential, parallel and
soup on top of the single-teacher trainer, and the Table-4-style summary.

Every transfer run (a student, one or several teachers, a config, a transfer and a test set) lives in a
run directory of a cache keyed by all of these, so one single-teacher run serves as the single-teacher
baseline, the first sequential step and a soup ingredient, and an interrupted study resumes where it
stopped (a finished run is loaded, an unfinished one continues from its last epoch).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import cache_home, read_json
from gkt.core.registry import Registry
from gkt.data.datasets import ImageDataset
from gkt.engine.loop import predict_logits
from gkt.engine.metrics import correctness, knowledge_gain_loss
from gkt.models.checkpoint import checkpoint_paths, load_checkpoint, weights_hash
from gkt.models.classifier import Classifier, check_label_space
from gkt.transfer.base import METHODS, TEACHERS_LOGITS
from gkt.transfer.evaluation import transfer_metrics
from gkt.transfer.trainer import TransferConfig, TransferOutcome, load_state, run_transfer

RUN_CACHE_FORMAT = "gkt-transfer-run/1"


# Teacher orders for sequential transfer, from the teachers' test accuracies to positions.
ORDERS: Registry[Callable[[Sequence[float]], list[int]]] = Registry("teacher order")
ORDERS.update({"given": lambda accs: list(range(len(accs))),
               "asc": lambda accs: sorted(range(len(accs)), key=lambda i: accs[i]),
               "desc": lambda accs: sorted(range(len(accs)), key=lambda i: -accs[i])})


# Single-teacher methods and their K-teacher form for parallel transfer.
PARALLEL_FORMS = {"kl-dp": "kl-dp-multi", "kl-dp-unsup": "kl-dp-multi-unsup"}


def parallel_method(method: str) -> str:
    """The K-teacher method parallel transfer runs for ``method`` (a method that takes stacked teachers as is)."""
    if method in METHODS and TEACHERS_LOGITS in METHODS[method].needs:
        return method
    if method not in PARALLEL_FORMS:
        forms = ", ".join(f"{k} (runs {v})" for k, v in PARALLEL_FORMS.items())
        raise GktError(f"parallel transfer needs a method that partitions the data over K teachers; {method} "
                       f"distils from one teacher at a time (use it with sequential or soup). Parallel methods: {forms}")
    return PARALLEL_FORMS[method]


def check_teachers(student: Classifier, teachers: Sequence[Classifier]) -> None:
    """At least one teacher, each in the student's label space, none given twice (same weights)."""
    if not teachers:
        raise GktError("give at least one teacher")
    seen: dict[str, int] = {}
    for position, teacher in enumerate(teachers, 1):
        check_label_space(teacher, student.class_names, f"the student {student.name}")
        identity = stable_hash(model_identity(teacher))
        if identity in seen:
            raise GktError(f"teacher {position} ({teacher.name}) is the same model as teacher {seen[identity]}; "
                           "give each teacher once")
        seen[identity] = position


def model_identity(model: Classifier) -> dict[str, Any]:
    return {"arch": model.arch.to_dict(), "preprocess": model.preprocess.to_dict(), "class_names": model.class_names,
            "weights": weights_hash(model)}


def weight_soup(models: Sequence[Classifier], reference: Classifier | None = None) -> Classifier:
    """The uniform weight average of ``models`` (parameters and floating-point buffers; integer buffers
    such as BatchNorm's ``num_batches_tracked`` are taken from the first model). Every model must have
    the architecture and preprocessing of ``reference`` (default: the first model)."""
    if not models:
        raise GktError("a soup needs at least one model")
    reference = reference or models[0]
    shapes = {k: v.shape for k, v in reference.net.state_dict().items()}
    for model in models:
        if model.arch != reference.arch or model.preprocess != reference.preprocess:
            raise GktError(f"cannot put {model.name} ({model.arch.describe()}) into a soup with {reference.name} "
                           f"({reference.arch.describe()}): a weight soup needs every model to have the student's "
                           "architecture and preprocessing")
        if {k: v.shape for k, v in model.net.state_dict().items()} != shapes:
            raise GktError(f"cannot put {model.name} into a soup: its weights do not match {reference.name}'s")
    states = [model.net.state_dict() for model in models]
    averaged = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone()
                for k, v in states[0].items()}
    soup = models[0].clone()
    soup.net.load_state_dict(averaged)
    soup.provenance = {"soup": [model.provenance for model in models]}
    return soup


@dataclass(frozen=True)
class TransferSetup:
    """What every run of one multi-teacher study shares: data, config (seed included), device, run cache."""

    transfer_set: ImageDataset
    test_set: ImageDataset
    config: TransferConfig
    device: torch.device
    cache_dir: Path = field(default_factory=lambda: cache_home() / "transfer-runs")

    def correct(self, model: Classifier) -> torch.Tensor:
        """``bool [N]``: the model's correctness on the test set."""
        return correctness(predict_logits(model, self.test_set, self.device, desc="evaluate"), self.test_set.labels)


def run_key(student: Classifier, teachers: Sequence[Classifier], config: TransferConfig, setup: TransferSetup) -> str:
    """Everything that determines a transfer run's result, hashed."""
    return stable_hash({"format": RUN_CACHE_FORMAT, "student": model_identity(student),
                        "teachers": [model_identity(t) for t in teachers], "config": config.to_dict(),
                        "transfer_set": setup.transfer_set.fingerprint(), "test_set": setup.test_set.fingerprint(),
                        "device": setup.device.type}, length=24)


def read_history(path: Path) -> list[dict[str, Any]]:
    """A run's ``metrics.csv`` back as numbers (cells a row lacks are left out)."""
    with open(path, newline="") as f:
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def cached_transfer(student: Classifier, teachers: Sequence[Classifier], setup: TransferSetup,
                    config: TransferConfig | None = None) -> TransferOutcome:
    """:func:`run_transfer` in the cache directory of its key: a finished run is loaded, an interrupted
    one resumed from its last epoch, anything else run."""
    config = config or setup.config
    run_dir = setup.cache_dir / run_key(student, teachers, config, setup)
    if (run_dir / "final.json").is_file():
        final = read_json(run_dir / "final.json")
        if final["status"] == "ok":
            return TransferOutcome(load_checkpoint(run_dir / "student"), read_history(run_dir / "metrics.csv"), final,
                                   run_dir / "student.safetensors")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoint_paths(run_dir / "student"):  # a student saved by a run killed before final.json
        stale.unlink(missing_ok=True)
    resume = load_state(run_dir) if (run_dir / "state.pt").is_file() else None
    teacher = teachers[0] if len(teachers) == 1 else list(teachers)
    return run_transfer(student, teacher, setup.transfer_set, setup.test_set, config, setup.device, run_dir,
                        resume=resume)


@dataclass
class MultiResult:
    """One multi-teacher mode's result: the final model and its metrics against the original student."""

    mode: str
    model: Classifier
    metrics: dict[str, float]
    steps: list[dict[str, Any]]  # sequential: one row per step; parallel: the run; soup: one row per ingredient
    details: dict[str, Any] = field(default_factory=dict)


class MultiTeacherStudy:
    """A student, a set of teachers and one :class:`TransferSetup`: single-teacher runs and the
    multi-teacher modes, sharing the test-set evaluations of the student and the teachers."""

    def __init__(self, student: Classifier, teachers: Sequence[Classifier], setup: TransferSetup,
                 order: str = "given"):
        check_teachers(student, teachers)
        ORDERS.check(order)
        self.student, self.teachers, self.setup, self.order = student, list(teachers), setup, order
        self.correct_student = setup.correct(student)
        self.correct_teachers = torch.stack([setup.correct(t) for t in self.teachers])  # [K, N]
        self.acc_student = self.correct_student.double().mean().item()
        self.acc_teachers = self.correct_teachers.double().mean(1).tolist()
        self._runs: dict[str, TransferOutcome] = {}

    def transfer(self, student: Classifier, teachers: Sequence[Classifier],
                 config: TransferConfig | None = None) -> TransferOutcome:
        """A cached transfer run, memoised for this study."""
        key = run_key(student, teachers, config or self.setup.config, self.setup)
        if key not in self._runs:
            self._runs[key] = cached_transfer(student, teachers, self.setup, config)
        return self._runs[key]

    def metrics(self, correct_after: torch.Tensor, correct_teacher: torch.Tensor | None = None) -> dict[str, float]:
        """Transfer metrics against the original student; flips against ``correct_teacher`` (default: the
        teacher set, where a sample counts as known when any teacher gets it right)."""
        teacher = self.correct_teachers.any(0) if correct_teacher is None else correct_teacher
        return transfer_metrics(self.setup.test_set.labels, teacher, self.correct_student, correct_after)

    def single(self) -> list[dict[str, Any]]:
        """One single-teacher transfer per teacher, each from the original student."""
        rows = []
        for k, teacher in enumerate(self.teachers):
            outcome = self.transfer(self.student, [teacher])
            rows.append({"teacher": teacher.name, "acc_teacher": self.acc_teachers[k],
                         **self.metrics(self.setup.correct(outcome.model), self.correct_teachers[k]),
                         "run": str(outcome.checkpoint.parent)})
        return rows

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
        outcomes = [self.transfer(self.student, [teacher]) for teacher in self.teachers]
        model = weight_soup([o.model for o in outcomes], reference=self.student)
        steps = [{"teacher": t.name, **self.metrics(self.setup.correct(o.model), self.correct_teachers[k]),
                  "run": str(o.checkpoint.parent)} for k, (t, o) in enumerate(zip(self.teachers, outcomes))]
        return MultiResult("soup", model, self.metrics(self.setup.correct(model)), steps)


MODES: Registry[Callable[[MultiTeacherStudy], MultiResult]] = Registry("multi-teacher mode")
MODES.update({"sequential": MultiTeacherStudy.sequential, "parallel": MultiTeacherStudy.parallel,
              "soup": MultiTeacherStudy.soup})


def resolve_modes(requested: Sequence[str], method: str) -> list[str]:
    """The modes to run, in table order; ``all`` means every mode the method supports (plain KL has no
    parallel form, as in the paper's Table 9)."""
    unknown = sorted(set(requested) - {*MODES, "all"})
    if unknown:
        raise GktError(f"unknown multi-teacher mode(s) {unknown}; choose from {', '.join(MODES)} or all")
    if "all" in requested:
        try:
            parallel_method(method)
            return list(MODES)
        except GktError:
            return [m for m in MODES if m != "parallel"]
    if "parallel" in requested:
        parallel_method(method)
    return [m for m in MODES if m in requested]
