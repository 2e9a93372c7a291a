"""``gkt improve``: make a user's model better with the models they have — and certify it is not worse.

The job, in five steps (each a piece gkt already has, joined here):

1. **Splits.** The data's labelled val split (shipped, else carved from train with ``val_fraction``) is cut,
   stratified and seeded, into a *selection* split (``selection_share``) and a *certification* split (the
   rest); the transfer set is a stratified ``fraction`` of the rest of train (its labels unused under
   ``unlabelled``). The three never overlap, and the data's test split is not touched.
2. **Teachers.** The zoo is ranked for the student by complementary knowledge on the selection split (ρ_pos:
   the share of images the teacher gets right and the student wrong, paper §3); a teacher whose ρ_pos does not
   exceed every random-init teacher's (one per architecture) beyond noise (2 standard errors) is dropped.
3. **Search** within ``budget`` transfers, each a job of the one grid runner (results store, resume after a
   kill, ``workers``/Ray): stage 1 the learning rate (the top teacher at every rate of ``lrs``, ≥ 30× around the
   default; with labels, plain cross-entropy fine-tuning at the same rates as the control a teacher must
   beat), stage 2 the teachers (each other kept teacher, and all kept teachers one after another —
   sequential multi-teacher transfer, paper §4.3), stage 3 the epochs (the best transfer, and the best
   control, for ``longer_epochs``). Every candidate is scored on the selection split only.
4. **Certify** the one best candidate on the certification split, used for nothing else (exact one-sided
   McNemar test and lower confidence bound of Δacc; :mod:`gkt.analysis.certify`).
5. **Decide.** Accepted: the improved model is written (``file:`` checkpoint, plus the student's own library
   format where it has one). Refused: "no certified improvement", the student untouched — a refusal is an
   answer. ``decision.json`` holds the decision, its evidence and its risk.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gkt.analysis.certify import Certificate, certify
from gkt.analysis.complementary import analyze
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import new_run_dir, read_json, write_csv, write_json
from gkt.core.runtime import resolve_device, seed_everything
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_indices, stratified_subset
from gkt.engine.loop import Runtime
from gkt.engine.predictions import dataset_identity, get_many
from gkt.experiments.grid import (
    STORE_NAME,
    LocalBackend,
    RayBackend,
    ResultsStore,
    failed_rows,
    job_key,
    run_study,
)
from gkt.models import Classifier, DataInfo, load_model
from gkt.models.checkpoint import load_checkpoint, save_checkpoint
from gkt.models.export import EXPORT_FORMATS, export_model, without_class_map
from gkt.transfer import TransferConfig, decoded_for, run_transfer
from gkt.transfer.mutual import MUTUAL_METHODS, MutualConfig, run_mutual

log = logging.getLogger(__name__)

IMPROVE_FORMAT = "gkt-improve/1"  # in every candidate job: a change of what a job computes changes its key
CONTROL = "ce"  # plain cross-entropy fine-tuning on the labels: the control a teacher must beat
CANDIDATES_DIR = "candidates"  # in the run directory holding the results store: one folder per candidate
STORE_POINTER = "store.json"  # in a resumed run's directory: where its results store and candidates are
RANDOM_SAMPLES = 1000  # the random-init teachers' seeded stratified sample of the selection split (s.e. ≤ 0.5 pp)


@dataclass(frozen=True)
class ImproveConfig:
    """The options of ``gkt improve`` that shape its decision (the CLI's and :func:`improve`'s defaults)."""

    data: str = "fmnist"
    unlabelled: bool = False  # the transfer set's labels are not used (selection and certification stay labelled)
    risk: float = 0.05  # the chance of accepting a model that is in truth no better
    budget: int = 20  # candidate transfers at most (stage 1 + 2 + 3)
    # stage 1's learning rates (SGD, momentum 0.9): 1000x around the transfer default 3e-4 — a student far from
    # converged moves only at the high end, a converged one only at the low end
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    epochs: int = 1  # stages 1 and 2
    longer_epochs: int = 3  # stage 3: the best candidates trained this long
    fraction: float = 1.0  # stratified share of the train split as transfer set: all of it (the user's data)
    max_teachers: int = 3  # the top-ranked kept teachers searched
    held_out: str = "test"  # the labelled split cut into selection + certification: test (no model trained on
    # it: a folder's test/ or val/, hf's test or validation split) or val (shipped, else carved from train)
    selection_share: float = 0.5  # share of the held-out split for selection; the rest certifies
    val_fraction: float = 0.1  # held_out="val": share of train carved as val when the data ships none
    batch_size: int = 128
    seed: int = 0
    class_map: dict[str, Any] | None = None  # {data class: model class or list}, aligning every model
    data_dir: str | None = None
    zoo_dir: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        checks = [(0 < self.risk < 1, f"--risk must be in (0, 1), got {self.risk}"),
                  (self.budget >= 1, f"--budget must be at least 1 transfer, got {self.budget}"),
                  (bool(self.lrs) and all(math.isfinite(lr) and lr > 0 for lr in self.lrs),
                   f"--lrs must be positive learning rates, got {list(self.lrs)}"),
                  (self.epochs >= 1 and self.longer_epochs >= 1,
                   f"--epochs and --longer-epochs must be at least 1, got {self.epochs}, {self.longer_epochs}"),
                  (0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}"),
                  (self.max_teachers >= 1, f"--max-teachers must be at least 1, got {self.max_teachers}"),
                  (0 < self.selection_share < 1, f"--selection-share must be in (0, 1), got {self.selection_share}"),
                  (self.held_out in ("test", "val"), f"--held-out must be test or val, got {self.held_out!r}"),
                  (0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
                  (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")]
        for ok, message in checks:
            if not ok:
                raise GktError(message)

    @property
    def method(self) -> str:
        """The transfer method: KL+DP with labels, its label-free form without (paper §4.2, Eq. 4)."""
        return "kl-dp-unsup" if self.unlabelled else "kl-dp"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lrs": list(self.lrs), "method": self.method}


# ---------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Splits:
    """The transfer set and the two labelled held-out splits, disjoint; ``val_source`` says where they came from."""

    transfer: ImageDataset
    selection: ImageDataset
    certification: ImageDataset
    val_source: str

    def sizes(self) -> dict[str, Any]:
        return {"transfer": len(self.transfer), "selection": len(self.selection),
                "certification": len(self.certification), "held_out_from": self.val_source}


def held_out_split(data: str, data_dir: str | None, held_out: str, val_fraction: float, seed: int
                   ) -> tuple[ImageDataset, ImageDataset, str]:
    """``(train, held-out, where the held-out split came from)``, never overlapping: the data's test split
    (``held_out="test"``: a folder's test/ or val/, hf's test or validation split) or its val split (shipped,
    else carved from train, which is then the rest)."""
    if held_out == "test":
        train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
        val = load_split(data, "test", data_dir=data_dir)
        return train, val, f"{data}'s test split ({val.name})"
    try:  # a val split the data ships: train stays whole
        val = load_split(data, "val", data_dir=data_dir, val_fraction=0)
        return load_split(data, "train", data_dir=data_dir, val_fraction=0), val, f"the val split {data} ships ({val.name})"
    except GktError:  # none shipped: carve it from train (train is then the rest; never overlapping)
        val = load_split(data, "val", data_dir=data_dir, val_fraction=val_fraction, seed=seed)
        train = load_split(data, "train", data_dir=data_dir, val_fraction=val_fraction, seed=seed)
        return train, val, (f"a stratified {val_fraction:g} of {data}'s train split (seed {seed}), carved as val: "
                            "only held out for models that did not train on it")


@functools.lru_cache(maxsize=4)
def load_splits(data: str, data_dir: str | None, held_out: str, val_fraction: float, selection_share: float,
                fraction: float, seed: int) -> Splits:
    """The improve splits of ``data`` (cached per process: every candidate job of a worker shares them)."""
    train, val, source = held_out_split(data, data_dir, held_out, val_fraction, seed)
    chosen = stratified_indices(val.labels, fraction=selection_share, seed=seed)
    rest = torch.ones(len(val), dtype=torch.bool)
    rest[chosen] = False
    selection = val.subset(chosen, f"selection={selection_share},seed={seed}")
    certification = val.subset(rest.nonzero().flatten(), f"certification={1 - selection_share:.4g},seed={seed}")
    if not len(selection) or not len(certification):
        raise GktError(f"{data}: its held-out split ({len(val)} images) is too small to cut into a selection and a "
                       "certification split; give more held-out data")
    transfer = stratified_subset(train, fraction=fraction, seed=seed)
    return Splits(transfer, selection, certification, source)


def load_models(specs: Sequence[str], config: ImproveConfig) -> list[Classifier]:
    """``specs`` aligned to the data's classes (``config.class_map``, else by name); fresh copies of models
    cached per process."""
    class_map = json.dumps(config.class_map, sort_keys=True) if config.class_map else None
    return [_cached_model(spec, config.data, config.data_dir, config.held_out, config.val_fraction, config.selection_share,
                          config.fraction, config.seed, config.zoo_dir, class_map).clone() for spec in specs]


@functools.lru_cache(maxsize=32)
def _cached_model(spec: str, data: str, data_dir: str | None, held_out: str, val_fraction: float,
                  selection_share: float, fraction: float, seed: int, zoo_dir: str | None, class_map: str | None
                  ) -> Classifier:
    splits = load_splits(data, data_dir, held_out, val_fraction, selection_share, fraction, seed)
    return load_model(spec, DataInfo.from_dataset(splits.transfer), zoo_dir,
                      class_map=json.loads(class_map) if class_map else "auto")


# ---------------------------------------------------------------------------------------------- teachers


@dataclass(frozen=True)
class TeacherRank:
    """One zoo model's complementary knowledge for the student on the selection split."""

    spec: str
    acc: float
    rho_pos: float  # right where the student is wrong
    rho_neg: float  # wrong where the student is right
    random_rho_pos: float  # the best ρ_pos of the random-init teachers (one per architecture) for this student
    kept: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_teachers(student: Classifier, teachers: Sequence[Classifier], specs: Sequence[str], selection: ImageDataset,
                  device: torch.device, config: ImproveConfig, workers: int | None = None) -> list[TeacherRank]:
    """The zoo ranked by ρ_pos for ``student`` on ``selection`` (one forward pass per model, stored), each
    kept when its ρ_pos exceeds every random-init teacher's (one per architecture of the student and the zoo)
    by more than 2 standard errors."""
    names = [f"teacher{i}" for i in range(len(teachers))]
    models = [_renamed(student, "student"), *(_renamed(t, n) for t, n in zip(teachers, names))]
    analysis = analyze(models, selection, device, seed=config.seed, semantic=False, precision=config.precision,
                       workers=workers, random_baseline_samples=RANDOM_SAMPLES)
    view = analysis.gains("student")
    # the reference: the best of the random-init teachers (one per architecture) for this student
    random_rho = float(analysis.random.rho_pos[:, 0].max()) if analysis.random is not None else 0.0
    n, n_random = analysis.num_samples, analysis.random.samples if analysis.random is not None else 1
    rows = []
    for row in view.rows:
        spec = specs[names.index(row.teacher)]
        noise = 2 * math.sqrt(row.rho_pos * (1 - row.rho_pos) / n + random_rho * (1 - random_rho) / n_random)
        kept = row.rho_pos - noise > random_rho
        reason = (f"ρ_pos {100 * row.rho_pos:.2f}% vs the best random-init teacher's {100 * random_rho:.2f}% "
                  f"(2 s.e. {100 * noise:.2f} pp): " + ("holds knowledge the student lacks" if kept else
                                                           "no more than a random teacher; dropped"))
        rows.append(TeacherRank(spec, row.acc_teacher, row.rho_pos, row.rho_neg, random_rho, kept, reason))
    return rows


def _renamed(model: Classifier, name: str) -> Classifier:
    twin = model.clone()
    twin.name = name
    return twin


# ---------------------------------------------------------------------------------------------- candidates


class CandidateJob:
    """The grid's job function of ``gkt improve``: one candidate transfer (one teacher, several one after
    another, or the cross-entropy control), scored on the selection split; the result model is saved under
    ``root/<job key>/model`` so the chosen one is certified and written without training it again."""

    def __init__(self, root: Path, device: str = "auto"):
        self.root, self.device = Path(root), device

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        config = ImproveConfig(**job["improve"])
        splits = load_splits(config.data, config.data_dir, config.held_out, config.val_fraction, config.selection_share,
                             config.fraction, config.seed)
        device = resolve_device(self.device)
        student, *teachers = load_models([job["student"], *job["teachers"]], config)
        if [m.identity() for m in (student, *teachers)] != [job["student_id"], *job["teacher_ids"]]:
            raise GktError("a model spec of this candidate names other weights than when the search began; start "
                           "a new gkt improve")
        settings = TransferConfig(method=job["method"], epochs=job["epochs"], lr=job["lr"], seed=job["seed"],
                                  batch_size=config.batch_size,
                                  unlabelled=config.unlabelled and job["method"] != CONTROL)
        runtime = Runtime(precision=config.precision, evaluate_every_epoch=False)
        model, metrics = student, {}
        if job["method"] in MUTUAL_METHODS:  # the student and its teacher learn from each other at once
            transfer_set, selection = decoded_for([student, *teachers], splits.transfer, splits.selection)
            seed_everything(job["seed"])
            mutual = MutualConfig(epochs=job["epochs"], lr=job["lr"], batch_size=config.batch_size,
                                  unlabelled=MUTUAL_METHODS[job["method"]], seed=job["seed"])
            outcome = run_mutual([student, *teachers], transfer_set, selection, mutual, device, runtime)
            model, metrics = outcome.models[0], outcome.rows[0]
            teachers = []
        for teacher in teachers or ([] if metrics else [student]):  # the control: cross-entropy, with the student as its own teacher
            transfer_set, selection = decoded_for([model, teacher], splits.transfer, splits.selection)
            seed_everything(job["seed"])
            outcome = run_transfer(model.clone().requires_grad_(True), teacher, transfer_set, selection, settings,
                                   device, runtime=runtime)
            model, metrics = outcome.model, outcome.final
        model.name = student.name
        model.provenance = {"improve": {"student": job["student"], "teachers": job["teachers"],
                                        "method": job["method"], "lr": job["lr"], "epochs": job["epochs"]},
                            "student_provenance": student.provenance}
        path = save_checkpoint(model, self.root / job_key(job) / "model", overwrite=True)
        acc_before = float(job["selection_acc_before"])
        return {"selection_acc": metrics["acc"], "selection_delta": metrics["acc"] - acc_before,
                "checkpoint": f"file:{path.with_suffix('')}", "train_loss": metrics.get("train_loss")}


@dataclass(frozen=True)
class Candidate:
    """One candidate of the search: what it tried and how it scored on the selection split."""

    stage: int
    teachers: tuple[str, ...]  # empty: the cross-entropy control
    method: str
    lr: float
    epochs: int
    job: dict[str, Any] = field(repr=False, compare=False)
    selection_acc: float | None = None
    selection_delta: float | None = None
    checkpoint: str | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        who = " then ".join(self.teachers) if self.teachers else "no teacher (cross-entropy on the labels)"
        if self.method in MUTUAL_METHODS:
            return f"{self.method} with {who} (both learning at once), lr {self.lr:g}, {self.epochs} epoch(s)"
        return f"{self.method} from {who}, lr {self.lr:g}, {self.epochs} epoch(s)"

    def row(self, chosen: bool) -> dict[str, Any]:
        return {"stage": self.stage, "teachers": " + ".join(self.teachers) or "-", "method": self.method,
                "lr": self.lr, "epochs": self.epochs, "selection_acc": self.selection_acc,
                "selection_delta": self.selection_delta, "chosen": chosen, "error": self.error}


class Search:
    """The staged search over candidates, each a grid job in one results store (so a rerun skips what is
    done and a killed search resumes); ``budget`` caps the jobs over all stages."""

    def __init__(self, student_spec: str, student: Classifier, ranked: Sequence[tuple[str, Classifier]],
                 config: ImproveConfig, splits: Splits, acc_before: float, store: ResultsStore, root: Path,
                 backend: LocalBackend | RayBackend, device: str, data_id: str):
        self.student_spec, self.student, self.ranked, self.config = student_spec, student, list(ranked), config
        self.acc_before, self.store, self.root, self.backend, self.device = acc_before, store, root, backend, device
        self.data_id, self.student_id = data_id, student.identity()
        self.ids = {spec: model.identity() for spec, model in self.ranked}
        self.candidates: list[Candidate] = []
        self.failures: list[str] = []

    @property
    def left(self) -> int:
        return self.config.budget - len(self.candidates)

    def candidate(self, stage: int, teachers: Sequence[str], method: str, lr: float, epochs: int) -> Candidate:
        job = {"format": IMPROVE_FORMAT, "improve": {k: v for k, v in self.config.to_dict().items() if k != "method"},
               "student": self.student_spec, "student_id": self.student_id, "teachers": list(teachers),
               "teacher_ids": [self.ids[t] for t in teachers], "method": method, "lr": lr, "epochs": epochs,
               "seed": self.config.seed, "data_id": self.data_id, "selection_acc_before": self.acc_before}
        return Candidate(stage, tuple(teachers), method, lr, epochs, job)

    def run(self, stage: int, wanted: Sequence[Candidate], desc: str) -> list[Candidate]:
        """Run ``wanted`` (those the budget allows, skipping any already tried) and return them scored."""
        tried = {job_key(c.job) for c in self.candidates}
        fresh = [c for c in dict((job_key(c.job), c) for c in wanted).values() if job_key(c.job) not in tried]
        fresh = fresh[:max(self.left, 0)]
        if not fresh:
            return []
        counts = run_study(CandidateJob(self.root, self.device), [c.job for c in fresh], self.store, self.backend,
                           retry_failed=True, desc=desc)
        for row in failed_rows(self.store, counts.failed + counts.not_retried):
            self.failures.append(str(row.metrics.get("error", "?")))
        done = {r.key: r.metrics for r in self.store.rows("done")}
        errors = {r.key: str(r.metrics.get("error", "?")) for r in self.store.rows("failed")}
        scored = []
        for c in fresh:
            key = job_key(c.job)
            metrics = done.get(key)
            scored.append(replace(c, selection_acc=metrics["selection_acc"], selection_delta=metrics["selection_delta"],
                                  checkpoint=metrics["checkpoint"]) if metrics is not None else
                          replace(c, error=errors.get(key, "did not run")))
        self.candidates += scored
        return scored

    @property
    def mutual_method(self) -> str:
        return "mutual-unsup" if self.config.unlabelled else "mutual"

    def best(self, control: bool | None = None) -> Candidate | None:
        """The best scored candidate (ties: the earliest), among the controls or the transfers, or all."""
        pool = [c for c in self.candidates if c.selection_acc is not None
                and (control is None or (c.method == CONTROL) == control)]
        return max(pool, key=lambda c: c.selection_acc, default=None)

    def search(self, say: Callable[[str], None]) -> None:
        cfg, method = self.config, self.config.method
        teachers = [spec for spec, _ in self.ranked]
        stage1 = [self.candidate(1, teachers[:1], method, lr, cfg.epochs) for lr in cfg.lrs] if teachers else []
        if not cfg.unlabelled:
            stage1 += [self.candidate(1, [], CONTROL, lr, cfg.epochs) for lr in cfg.lrs]
        if stage1:
            say(f"stage 1/3 — learning rate: {len(stage1)} candidates "
                f"({'the top teacher' if teachers else 'no teacher'} at lr {', '.join(f'{lr:g}' for lr in cfg.lrs)}"
                + ("; cross-entropy fine-tuning at the same rates as the control" if not cfg.unlabelled else "")
                + f"; budget {cfg.budget})")
            self.run(1, stage1, "improve stage 1")
        best = self.best(control=False)
        if best is not None:
            others = [self.candidate(2, [t], method, best.lr, cfg.epochs) for t in teachers[1:]]
            together = [self.candidate(2, teachers, method, best.lr, cfg.epochs)] if len(teachers) > 1 else []
            mutual = self.candidate(2, teachers[:1], self.mutual_method, best.lr, cfg.epochs)
            say("stage 2/3 — teachers: " + (f"each other kept teacher, all {len(teachers)} one after another, and "
                                             if len(teachers) > 1 else "") +
                f"the top teacher learning from the student at once (mutual), at lr {best.lr:g}")
            self.run(2, [*others, *together, mutual], "improve stage 2")
        stage3, which = [], []
        for pool, name in ((False, "the best transfer"), (True, "the best control")):
            top = self.best(control=pool)
            if top is not None and cfg.longer_epochs != top.epochs:
                stage3.append(self.candidate(3, top.teachers, top.method, top.lr, cfg.longer_epochs))
                which.append(name)
        if stage3 and self.left > 0:
            say(f"stage 3/3 — epochs: {' and '.join(which)} for {cfg.longer_epochs} epochs")
            self.run(3, stage3, "improve stage 3")


# ---------------------------------------------------------------------------------------------- certify


def certification_pass(models: Sequence[Classifier], certification: ImageDataset, device: torch.device,
                       precision: str = "fp32", workers: int | None = None) -> list[torch.Tensor]:
    """Per-image correctness of ``models`` (the original and the one chosen candidate) on the certification
    split: the only place that split is read."""
    dataset = decoded_for(list(models), certification, certification)[1]
    preds = get_many(list(models), dataset, device, precision=precision, workers=workers)
    return [p.correct for p in preds]


def class_changes(labels: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                  class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per class on the certification split: images, accuracy before and after, turned right and wrong."""
    rows = []
    for k, name in enumerate(class_names):
        mask = labels == k
        n = int(mask.sum())
        if not n:
            continue
        right, wrong = int((~before & after & mask).sum()), int((before & ~after & mask).sum())
        rows.append({"class": name, "images": n, "acc_before": before[mask].double().mean().item(),
                     "acc_after": after[mask].double().mean().item(), "turned_right": right, "turned_wrong": wrong,
                     "delta_acc": (right - wrong) / n})
    return rows


# ---------------------------------------------------------------------------------------------- decide


@dataclass
class Decision:
    """What ``gkt improve`` decided and why: ``decision.json`` as an object."""

    accepted: bool
    model: str | None  # the file: spec of the improved model (None when refused)
    teachers: list[str]  # the specs the improved model learned from (empty: none, or the control)
    certificate: dict[str, Any] | None  # None: no candidate beat the original on the selection split
    candidates: list[dict[str, Any]]
    student: str = ""
    summary: str = ""
    splits: dict[str, Any] = field(default_factory=dict)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] | None = None
    export: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    run_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def improve(student: str, zoo: Sequence[str], *, data: str = ImproveConfig.data, unlabelled: bool = False,
            risk: float = ImproveConfig.risk, budget: int = ImproveConfig.budget,
            lrs: Sequence[float] = ImproveConfig.lrs, epochs: int = ImproveConfig.epochs,
            longer_epochs: int = ImproveConfig.longer_epochs, fraction: float = ImproveConfig.fraction,
            max_teachers: int = ImproveConfig.max_teachers, held_out: str = ImproveConfig.held_out,
            selection_share: float = ImproveConfig.selection_share,
            val_fraction: float = ImproveConfig.val_fraction, batch_size: int = ImproveConfig.batch_size,
            seed: int = ImproveConfig.seed, class_map: str | Path | dict[str, Any] | None = None,
            data_dir: str | None = None, zoo_dir: str | None = None, precision: str = ImproveConfig.precision,
            device: str | torch.device = "auto", workers: int = 1, threads: int | None = None,
            backend: LocalBackend | RayBackend | None = None, out: str | Path = "runs", run_dir: str | Path | None = None,
            resume: str | Path | None = None, say: Callable[[str], None] = print) -> Decision:
    """Improve ``student`` with the models of ``zoo`` and certify the result on held-out data (see the module
    docstring); returns the :class:`Decision`, also written as ``RUN_DIR/decision.json`` with the candidates'
    table, the certification's per-class changes and ``findings.json`` (the report's opening). The keyword
    arguments are ``gkt improve``'s options; ``run_dir`` defaults to a fresh directory under ``out``;
    ``resume`` (a run directory of an interrupted improve) reuses its results store and candidates."""
    from gkt.models.class_map import read_class_map

    start = time.perf_counter()
    if isinstance(class_map, (str, Path)):
        class_map = read_class_map(class_map)
    config = ImproveConfig(data=data, unlabelled=unlabelled, risk=risk, budget=budget, lrs=tuple(float(x) for x in lrs),
                           epochs=epochs, longer_epochs=longer_epochs, fraction=fraction, max_teachers=max_teachers,
                           held_out=held_out, selection_share=selection_share, val_fraction=val_fraction, batch_size=batch_size,
                           seed=seed, class_map=class_map, data_dir=data_dir, zoo_dir=zoo_dir, precision=precision)
    zoo = list(dict.fromkeys(zoo))
    if not zoo:
        raise GktError("give the models to learn from: --zoo SPEC [SPEC ...] (or `zoo` for every built zoo model)")
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(out, "improve")
    store_root = _store_root(Path(resume), run_dir) if resume else run_dir
    if store_root != run_dir:
        write_json(run_dir / STORE_POINTER, {"store": str((store_root / STORE_NAME).resolve())})
    seconds: dict[str, float] = {}

    splits = load_splits(config.data, config.data_dir, config.held_out, config.val_fraction, config.selection_share, config.fraction,
                         config.seed)
    if len(splits.transfer) < config.batch_size:
        raise GktError(f"{splits.transfer.name}: {len(splits.transfer)} transfer images is fewer than one batch of "
                       f"{config.batch_size}; lower --batch-size to {len(splits.transfer)} or less, or give more data "
                       "(a larger --fraction, if it is below 1)")
    say(f"splits: {len(splits.transfer)} transfer images ({'labels unused' if unlabelled else 'labelled'}), "
        f"{len(splits.selection)} selection and {len(splits.certification)} certification images from "
        f"{splits.val_source}")
    student_model, *zoo_models = load_models([student, *zoo], config)
    ids = {spec: m.identity() for spec, m in zip(zoo, zoo_models)}
    student_id = student_model.identity()
    pairs = [(spec, m) for spec, m in zip(zoo, zoo_models) if ids[spec] != student_id]
    if len(pairs) < len(zoo):
        say("the student itself is in the zoo: left out (a model holds no knowledge it lacks)")
    if not pairs:
        raise GktError("the zoo holds no model other than the student; give other models with --zoo")
    seen: dict[str, str] = {}
    for spec, _ in pairs:  # the same weights twice is one teacher
        seen.setdefault(ids[spec], spec)
    pairs = [(spec, m) for spec, m in pairs if seen[ids[spec]] == spec]

    t0 = time.perf_counter()
    workers_decode = None
    ranking = rank_teachers(student_model, [m for _, m in pairs], [s for s, _ in pairs], splits.selection,
                            torch_device, config, workers_decode)
    acc_before = _selection_accuracy(student_model, splits.selection, torch_device, config.precision)
    seconds["ranking"] = time.perf_counter() - t0
    kept = [r for r in ranking if r.kept][:config.max_teachers]
    say(f"teachers for {student} (selection split, {len(splits.selection)} images; student {100 * acc_before:.2f}%):")
    for r in ranking:
        say(f"  {'kept   ' if r in kept else 'dropped' if not r.kept else 'beyond --max-teachers'} {r.spec}: "
            f"acc {100 * r.acc:.2f}%, {r.reason}")
    models = dict(pairs)
    data_id = stable_hash([dataset_identity(splits.transfer), dataset_identity(splits.selection)])
    store = ResultsStore(store_root / STORE_NAME)
    backend = backend or LocalBackend(workers, threads)
    search = Search(student, student_model, [(r.spec, models[r.spec]) for r in kept], config, splits, acc_before,
                    store, store_root / CANDIDATES_DIR, backend, str(torch_device), data_id)
    t0 = time.perf_counter()
    if not kept and config.unlabelled:
        say("no teacher holds more knowledge for this student than a random one, and without labels there is no "
            "other candidate: nothing to search")
    else:
        with backend.held():  # Ray, say, starts once for the three stages
            search.search(say)
    seconds["search"] = time.perf_counter() - t0
    best = search.best()
    if search.failures and best is None:
        raise GktError(f"every candidate transfer failed (first: {search.failures[0]}); fix that, then rerun with "
                       f"--resume {store_root}")

    t0 = time.perf_counter()
    certificate: Certificate | None = None
    classes: list[dict[str, Any]] = []
    if best is not None and best.selection_acc is not None and best.selection_acc > acc_before:
        chosen_model = _load_candidate(best, student_model)
        before, after = certification_pass([student_model, chosen_model], splits.certification, torch_device,
                                           config.precision)
        certificate = certify(before, after, config.risk)
        classes = class_changes(splits.certification.labels, before, after, splits.certification.class_names)
    seconds["certification"] = time.perf_counter() - t0

    accepted = certificate is not None and certificate.accepted
    model_spec, export = None, None
    if accepted:
        chosen_model.provenance["improve"]["certificate"] = certificate.to_dict()
        model_spec, export = write_model(chosen_model, run_dir, say)
    seconds["total"] = time.perf_counter() - start
    seconds["transfers"] = sum(_job_seconds(store, c) for c in search.candidates)
    decision = Decision(
        accepted=accepted, model=model_spec,
        teachers=list(best.teachers) if best is not None else [],
        certificate=certificate.to_dict() if certificate is not None else None,
        candidates=[c.row(c is best) | {"label": c.label} for c in search.candidates], student=student,
        summary=_summary(student, best, certificate, acc_before, kept, config, search),
        splits=splits.sizes(), ranking=[r.to_dict() for r in ranking],
        chosen=None if best is None else {"label": best.label, "teachers": list(best.teachers), "method": best.method,
                                          "lr": best.lr, "epochs": best.epochs, "selection_acc": best.selection_acc,
                                          "selection_acc_before": acc_before, "checkpoint": best.checkpoint},
        export=export, config=config.to_dict(), seconds={k: round(v, 2) for k, v in seconds.items()},
        run_dir=str(run_dir))
    _write_outputs(run_dir, decision, classes, search)
    _prune(store_root / CANDIDATES_DIR, keep=None if best is None else best.checkpoint)
    say(decision.summary)
    return decision


def _store_root(old: Path, run_dir: Path) -> Path:
    """The directory holding the results store and candidates of the improve run ``old`` resumes."""
    if not old.is_dir():
        raise GktError(f"--resume {old}: no such run directory")
    pointer = old / STORE_POINTER
    try:
        root = Path(read_json(pointer)["store"]).parent if pointer.is_file() else old
    except (ValueError, KeyError, TypeError):
        raise GktError(f"{pointer} is damaged; start a new gkt improve instead of --resume") from None
    if not (root / STORE_NAME).is_file():
        raise GktError(f"--resume {old}: no {STORE_NAME} there (is it a gkt improve run directory?)")
    return root


def _prune(root: Path, keep: str | None) -> None:
    """Once decided, the candidates' models but the chosen one are deleted (their scores stay in the store)."""
    import shutil

    if not root.is_dir():
        return
    kept = Path(keep.removeprefix("file:")).parent.resolve() if keep else None
    for folder in root.iterdir():
        if folder.is_dir() and folder.resolve() != kept:
            shutil.rmtree(folder, ignore_errors=True)


def _selection_accuracy(model: Classifier, selection: ImageDataset, device: torch.device, precision: str) -> float:
    dataset = decoded_for([model], selection, selection)[1]
    return get_many([model], dataset, device, precision=precision)[0].accuracy


def _load_candidate(candidate: Candidate, student: Classifier) -> Classifier:
    path = Path(candidate.checkpoint.removeprefix("file:"))
    if not path.with_suffix(".json").is_file():
        raise GktError(f"the chosen candidate's model {path} is gone (deleted by hand?); start a new gkt improve")
    model = load_checkpoint(path)
    model.name = student.name
    return model


def _job_seconds(store: ResultsStore, candidate: Candidate) -> float:
    key = job_key(candidate.job)
    return sum(r.seconds or 0.0 for r in store.rows("done") if r.key == key)


def write_model(model: Classifier, run_dir: Path, say: Callable[[str], None], name: str = "model"
                ) -> tuple[str, dict[str, Any] | None]:
    """An improved model as ``file:RUN_DIR/NAME``, and in its own library's format where it has one
    (``RUN_DIR/export`` for ``model``, else ``RUN_DIR/NAME-export``)."""
    path = save_checkpoint(model, run_dir / name)
    spec = f"file:{path.with_suffix('')}"
    export = None
    library = EXPORT_FORMATS.get(model.arch.source if model.arch.source != "class_map"
                                 else model.arch.kwargs["base"]["source"])
    if library is not None:
        try:
            without_class_map(model)
            fmt, where = export_model(model, run_dir / ("export" if name == "model" else f"{name}-export"))
            export = {"format": fmt, "path": str(where)}
        except GktError as exc:
            export = {"format": library, "path": None, "note": str(exc)}
            say(f"not exported in {library}'s format: {exc}")
    return spec, export


def _summary(student: str, best: Candidate | None, certificate: Certificate | None, acc_before: float,
             kept: Sequence[TeacherRank], config: ImproveConfig, search: Search) -> str:
    if certificate is not None and certificate.accepted:
        how = ("plain cross-entropy fine-tuning on your labels beat every teacher on the selection split: the "
               "teachers add nothing beyond the labels here, so the improved model is the fine-tuned one"
               if best.method == CONTROL else f"{best.label}")
        return (f"accepted: {student} improved ({how}); {certificate.sentence()}.")
    if certificate is not None:
        return (f"refused: no certified improvement. The best candidate on the selection split ({best.label}) "
                f"was {certificate.sentence()}; {student} is left as it was.")
    if best is None:
        why = "no teacher holds more knowledge than a random one" if not kept else "every candidate failed"
        return f"refused: no certified improvement — {why}; {student} is left as it was (certification split unused)."
    return (f"refused: no certified improvement — no candidate beat {student} on the selection split "
            f"(best: {best.label}, {100 * best.selection_acc:.2f}% vs {100 * acc_before:.2f}%); "
            f"{student} is left as it was (certification split unused).")


def _write_outputs(run_dir: Path, decision: Decision, classes: list[dict[str, Any]], search: Search) -> None:
    """``decision.json``, ``candidates.csv``, ``teachers.csv``, ``certification_classes.csv`` and
    ``findings.json`` (the report's opening sentences)."""
    from gkt.reporting.improve import findings

    write_json(run_dir / "decision.json", decision.to_dict())
    write_csv(run_dir / "candidates.csv", [{k: v for k, v in row.items() if k != "label"}
                                          for row in decision.candidates] or [{"stage": "-"}])
    write_csv(run_dir / "teachers.csv", decision.ranking or [{"spec": "-"}])
    if classes:
        write_csv(run_dir / "certification_classes.csv", classes)
    write_json(run_dir / "findings.json", {"sentences": findings(decision, classes), "claims": []})
