"""``gkt improve``'s search: the candidate job (one transfer, several in sequence, mutual, or the
cross-entropy control; scored on the selection split, its model saved) and the staged search over candidates,
every one a job of the grid runner in one results store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gkt.core.errors import GktError
from gkt.core.runtime import resolve_device, seed_everything
from gkt.engine.loop import Runtime
from gkt.experiments.grid import LocalBackend, RayBackend, ResultsStore, failed_rows, job_key, run_study
from gkt.experiments.improve_setup import ImproveConfig, Splits, load_models, load_splits
from gkt.models import Classifier
from gkt.models.checkpoint import save_checkpoint
from gkt.transfer import TransferConfig, decoded_for, run_transfer
from gkt.transfer.mutual import MUTUAL_METHODS, MutualConfig, run_mutual

IMPROVE_FORMAT = "gkt-improve/1"  # in every candidate job: a change of what a job computes changes its key
CONTROL = "ce"  # plain cross-entropy fine-tuning on the labels: the control a teacher must beat

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


