"""Transfer on the one training loop, shared by every method.

Every model reads its own view of each image (its library's eval transform, or with photo augmentation the
epoch's crop at its own size and interpolation: :mod:`gkt.data.views`). Per step the loop
(:mod:`gkt.engine.loop`) augments one raw batch once; the :class:`TransferTask` lets the frozen models
(teacher, and the frozen copy of the initial student when the method needs it) produce the batch's
*targets* (:meth:`TransferTask.targets`) — or, on a deterministic pipeline (no augmentation, or photo
augmentation's per-epoch crops), reads them from their stored outputs (:mod:`gkt.engine.outputs_cache`); the student's outputs and the targets go to the
method, whose named losses the loop sums to update the student (and the method's own trainable parts).
After every epoch the method's result model is evaluated on the held-out split and the full training
state is checkpointed, so an interrupted run resumes to the same final weights. :class:`Runtime` says
*how* it runs (cache, precision, memory format, compilation, data-parallel ranks) without changing
what it computes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.io import write_csv, write_json
from gkt.data.augment import split_augment
from gkt.data.datasets import ImageDataset
from gkt.data.views import view_of
from gkt.engine.loop import Batch, LoopConfig, Runtime, Task, TrainLoop, predict_logits
from gkt.engine.metrics import correctness
from gkt.engine.outputs_cache import CachedOutputs
from gkt.engine.predictions import dataset_identity, get_many
from gkt.engine.sparse_targets import stack_targets
from gkt.engine.state import save_training_state
from gkt.models.checkpoint import save_checkpoint
from gkt.models.classifier import Classifier, check_label_space
from gkt.models.features import FeatureTap
from gkt.models.preprocess import decode_plan_for, to_unit_float
from gkt.transfer.base import (
    FROZEN_LOGITS,
    STUDENT_FEATURES,
    TEACHER_FEATURES,
    TEACHER_LOGITS,
    TEACHERS_LOGITS,
    PartitionMethod,
    Step,
    TransferMethod,
    create_method,
    label_free_methods,
)
from gkt.transfer.evaluation import partition_quality, transfer_metrics, transfer_rates
from gkt.transfer.evaluation import transfer_set_partition as partition_of
from gkt.transfer.recipes import RECIPES, get_recipe
from gkt.transfer.state import STATE_FORMAT, check_same_inputs

log = logging.getLogger(__name__)

DEFAULT_LR = RECIPES["gkt"].lr  # chosen by the sweep documented in docs/methods.md
TRANSFER_FRACTION = 0.1  # the default transfer set: this stratified share of the train split (as in the paper)
CACHEABLE_NEEDS = {TEACHER_LOGITS, TEACHERS_LOGITS, FROZEN_LOGITS}  # frozen outputs the store can hold
PREPARE_ONCE_MAX_ELEMENTS = 1 << 26  # frozen outputs prepared for the whole transfer set at most (256 MB fp32)


@dataclass(frozen=True)
class TransferConfig:
    """Everything that shapes a transfer run besides the models and the data."""

    method: str = "kl-dp"
    method_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    lr: float | None = None  # None: the recipe's
    weight_decay: float = 1e-3
    momentum: float = 0.9
    optimizer: str = "sgd"
    batch_size: int = 128
    temperature: float = 1.0
    augment: tuple[str, ...] | None = None  # None: the recipe's
    augment_epochs: int = 0  # photo augmentation: how many epochs of crops (and stored outputs); 0: one per epoch
    seed: int = 0
    unlabelled: bool = False  # the transfer set's labels must not be used
    student_mode: str = "train"  # "eval": the student's dropout off and BatchNorm statistics frozen while it learns
    recipe: str = "gkt"  # fills in lr and augment where not given (gkt.transfer.recipes)

    def __post_init__(self) -> None:
        lr, augment = get_recipe(self.recipe).resolve(self.lr, self.augment, self.batch_size)
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "augment", augment)

    def to_dict(self) -> dict[str, Any]:
        """Fields added later are left out at their defaults, so the identities of earlier runs still hold."""
        return {k: v for k, v in asdict(self).items() if k != "augment_epochs" or v}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferConfig:
        return cls(**{**d, "augment": tuple(d.get("augment", ()))})

    def build_method(self) -> TransferMethod:
        if self.augment_epochs < 0:
            raise GktError(f"augment_epochs must be 0 (one set of crops per epoch) or more, got {self.augment_epochs}")
        split_augment(self.augment)  # unknown or conflicting augmentation names fail before anything is loaded
        if self.student_mode not in ("train", "eval"):
            raise GktError(f"student_mode must be 'train' or 'eval', got {self.student_mode!r}")
        method = create_method(self.method, {"temperature": self.temperature, **self.method_args})
        if self.unlabelled and method.uses_labels:
            raise GktError(f"method {self.method} needs labels but the transfer set is unlabelled; use a "
                           f"label-free method ({', '.join(label_free_methods())})")
        return method


def freeze(model: Classifier) -> Classifier:
    """Eval mode, no gradients: a teacher or the frozen student."""
    return model.eval().requires_grad_(False)


# How each declared need is produced from the augmented batch ``x``, each model given its own view.
TARGET_PRODUCERS: dict[str, Callable[[TransferTask, torch.Tensor], torch.Tensor]] = {
    TEACHER_LOGITS: lambda task, x: task.teacher(x, task.input_of(task.teacher, x)),
    TEACHER_FEATURES: lambda task, x: task.teacher_tap(x, task.input_of(task.teacher, x)),
    TEACHERS_LOGITS: lambda task, x: torch.stack([t(x, task.input_of(t, x)) for t in task.teachers], 1),
    FROZEN_LOGITS: lambda task, x: task.frozen(x, task.input_of(task.frozen, x)),
}


def as_teachers(teacher: Classifier | Sequence[Classifier]) -> list[Classifier]:
    """One teacher or several (multi-teacher methods) as a non-empty list."""
    teachers = [teacher] if isinstance(teacher, Classifier) else list(teacher)
    if not teachers:
        raise GktError("give at least one teacher")
    return teachers


class TransferTask(Task):
    """The transfer as a task of the one training loop: the frozen models produce the batch's *targets*
    (read from their cached outputs where the loop's runtime allows), the student's outputs and the
    targets go to the method as a :class:`Step`, and the method's named losses are returned. The student
    and the method's trainable parts are optimised; teachers and the frozen student are in eval mode
    without gradients."""

    state_format = STATE_FORMAT
    divergence_hint = "the run is marked failed and no model was saved — lower --lr or --temperature"

    def __init__(self, student: Classifier, teachers: list[Classifier], method: TransferMethod,
                 config: TransferConfig, device: torch.device, transfer_set: ImageDataset, runtime: Runtime):
        if len(teachers) > 1 and TEACHERS_LOGITS not in method.needs:
            raise GktError(f"method {method.name} distils from one teacher; {len(teachers)} teachers at once need a "
                           "method that takes them stacked (kl-dp-multi, kl-dp-multi-unsup)")
        for t in teachers:
            check_label_space(t, student.class_names, f"the student {student.name}")
        self.config, self.device, self.method, self.transfer_set = config, device, method, transfer_set
        self.teachers = [freeze(t).to(device, memory_format=runtime.memory_format) for t in teachers]
        self.teacher = self.teachers[0]
        self.student = student.to(device, memory_format=runtime.memory_format).eval()
        self.frozen = freeze(student.clone()) if FROZEN_LOGITS in method.needs else None
        self.teacher_tap = FeatureTap(self.teacher, "features") if TEACHER_FEATURES in method.needs else None
        self.student_tap = FeatureTap(self.student, "features") if STUDENT_FEATURES in method.needs else None
        crop, batch_augment = split_augment(config.augment)
        self.runtime, self.plan, self.frozen_plan = runtime, transfer_set.decode_plan, transfer_set.decode_plan
        # Stored outputs need a deterministic input: no augmentation, or photo crops (fixed per epoch and row;
        # stored per epoch in begin_epoch); the paper's recipe computes them on every step.
        online_recipe = get_recipe(config.recipe).online_targets
        self.cache_per_epoch = runtime.cache_outputs and crop is not None and not batch_augment and not online_recipe
        self.cached = self._cache_targets(runtime, transfer_set) \
            if runtime.cache_outputs and not config.augment and not online_recipe else {}
        self.prepared = self._prepare_fixed_targets()
        example = transfer_set.load(torch.arange(min(8, len(transfer_set))))
        self.example = view_of(example, self.plan, student.preprocess.view) if len(self.plan) > 1 else None
        self.example = example if self.example is None else self.example  # the student's view, for setup
        self.student_forward: Callable[[torch.Tensor], torch.Tensor] = self.student
        self.method_forward: Callable[[Step], dict] = method

    def input_of(self, model: Classifier, x: torch.Tensor) -> torch.Tensor:
        """``model``'s normalised input from a batch of the transfer set: its own view of the decode plan
        (exactly its library's transform, or that transform's crop size and interpolation on the step's crop)."""
        return model.input_of(x, self.plan)

    def begin_epoch(self, dataset: ImageDataset) -> None:
        """With photo augmentation: the frozen models' outputs on this epoch's crops, from the output store
        (computed once per teacher, data, seed and epoch, then read by every run and study job)."""
        if self.cache_per_epoch:  # the frozen models' views of the epoch's crops (the loop may decode fewer)
            frozen_views = dataset.at_decode_plan(self.frozen_plan)
            self.cached = self._cache_targets(self.runtime, frozen_views)
            if len(frozen_views) != len(dataset):  # the pass left out unreadable images: rows no longer match
                raise GktError(f"{dataset.name}: {len(dataset) - len(frozen_views)} image(s) could not be read "
                               "(--bad-images skip); the stored targets of photo augmentation need every image: "
                               "remove the unreadable files, or run with --no-cache (frozen models on every step)")
            self.prepared = self._prepare_fixed_targets()

    def training_data(self, transfer_set: ImageDataset) -> ImageDataset:
        """What the loop decodes: only the student's view when every frozen model's output is read from the
        store (the other views would be decoded for nothing), else every model's view."""
        frozen_needs = [n for n in self.method.needs if n in TARGET_PRODUCERS]
        stored = all(n in self.cached for n in frozen_needs) or \
            (self.cache_per_epoch and all(n in CACHEABLE_NEEDS for n in frozen_needs))
        return transfer_set.at_decode_plan((self.student.preprocess.view,)) if stored else transfer_set

    def _cache_targets(self, runtime: Runtime, dataset: ImageDataset) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Cached-output readers for the declared needs that have one (rank 0 computes, then the rest read)."""
        sources = {TEACHER_LOGITS: self.teachers[:1], TEACHERS_LOGITS: self.teachers,
                   FROZEN_LOGITS: [self.frozen] if self.frozen is not None else []}
        wanted = {need: models for need, models in sources.items() if need in self.method.needs and models}
        if not wanted:
            return {}
        labels_allowed = self.method.uses_labels and not self.config.unlabelled
        dist = runtime.dist
        if not dist.is_main:
            dist.barrier()  # rank 0 computes and stores the outputs first
        frozen = list({id(m): m for models in wanted.values() for m in models}.values())
        temperature = self.method.temperature  # large label spaces: sparse targets drawn at the loss's T
        rows, data_id = len(dataset), dataset_identity(dataset)
        get_many(frozen, dataset, self.device, workers=runtime.loader_workers, data_id=data_id,
                 temperature=temperature)  # one decode pass
        if len(dataset) != rows:  # unreadable images left out by the pass (--bad-images skip)
            data_id = dataset_identity(dataset)
        readers = {need: [CachedOutputs(m, dataset, self.device, labels_allowed=labels_allowed,
                                        data_id=data_id, temperature=temperature) for m in models]
                   for need, models in wanted.items()}
        if dist.is_main:
            dist.barrier()

        def reader(need: str, outputs: list[CachedOutputs]) -> Callable[[torch.Tensor], torch.Tensor]:
            if need == TEACHERS_LOGITS:
                return lambda idx: stack_targets([o.rows(idx, self.device) for o in outputs], 1)
            return lambda idx: outputs[0].rows(idx, self.device)

        return {need: reader(need, outputs) for need, outputs in readers.items()}

    def _prepare_fixed_targets(self) -> dict[str, torch.Tensor] | None:
        """The method's prepared targets for the whole transfer set, once, when every output it needs is
        cached (fixed targets) and they fit :data:`PREPARE_ONCE_MAX_ELEMENTS`; else None (per batch)."""
        needs = [n for n in self.method.needs if n in TARGET_PRODUCERS]
        if not needs or not all(n in self.cached for n in needs):
            return None
        every = torch.arange(len(self.transfer_set))
        outputs = {n: self.cached[n](every) for n in needs}
        if sum(o.numel() for o in outputs.values()) > PREPARE_ONCE_MAX_ELEMENTS:
            return None
        labels = self.transfer_set.labels.to(self.device) if self.method.uses_labels else None
        return self.method.prepare_targets(outputs, labels)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.student.parameters(), *self.method.parameters()]

    def setup(self, loop: TrainLoop) -> None:
        self.plan = loop.dataset.decode_plan
        self.method.setup(self.student, self.teacher, len(self.transfer_set),
                          to_unit_float(self.example.to(self.device)))
        self.method.to(self.device)

    def prepare(self, loop: TrainLoop) -> None:
        """DDP for the trainable parts; only the student's forward is compiled."""
        self.student_forward = loop.wrap(self.student)
        self.method_forward = loop.wrap(self.method, compile=False)

    def train(self) -> None:
        self.student.train(self.config.student_mode == "train")
        self.method.train()

    @torch.no_grad()
    def targets(self, x: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen models' outputs the method declared it needs, for one augmented batch ``x`` (rows
        ``indices`` of the transfer set): read from the cache where there is one, else computed."""
        return {need: self.cached[need](indices) if need in self.cached else TARGET_PRODUCERS[need](self, x)
                for need in self.method.needs if need in TARGET_PRODUCERS}

    def step_targets(self, x: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """What the method's loss reads for one batch: rows of the prepared fixed targets, else the batch's
        frozen outputs prepared on the spot."""
        if self.prepared is not None:
            rows = indices.to(self.device, non_blocking=True)
            return {k: v[rows] for k, v in self.prepared.items()}
        return self.method.prepare_targets(self.targets(x, indices), labels)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, labels = batch.x, batch.labels if self.method.uses_labels else None
        student_input = self.input_of(self.student, x)
        step = Step(self.student_forward(x, student_input), self.step_targets(x, batch.indices, labels),
                    batch.indices, batch.generator, labels=labels,
                    student_features=self.student_tap(x, student_input) if self.student_tap is not None else None)
        return self.method_forward(step)

    def after_step(self, step: int) -> None:
        self.method.after_step(self.student, step)

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.net.state_dict(), "method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.net.load_state_dict(state["student"])
        self.method.load_state_dict(state["method"])


class TransferTrainer(TrainLoop):
    """The one training loop running a :class:`TransferTask`: trains ``student`` towards ``teacher`` with
    ``method``. Several teachers are for methods that declare ``teachers_logits`` (their logits stacked
    ``[B, K, C]``); ``self.teacher`` is the first."""

    def __init__(self, student: Classifier, teacher: Classifier | Sequence[Classifier], method: TransferMethod,
                 config: TransferConfig, device: torch.device, transfer_set: ImageDataset,
                 runtime: Runtime | None = None):
        runtime = runtime or Runtime()
        if len(transfer_set) < config.batch_size:
            raise GktError(f"{transfer_set.name}: {len(transfer_set)} samples is fewer than one batch of "
                           f"{config.batch_size}; lower --batch-size to {len(transfer_set)} or less, or give more data "
                           "(a larger --fraction, if it is below 1)")
        runtime.dist.shard_batch(config.batch_size)  # before any model is moved or any output cached
        self.task: TransferTask = TransferTask(student, as_teachers(teacher), method, config, device, transfer_set,
                                               runtime)
        transfer_set = self.task.training_data(transfer_set)
        loop_config = LoopConfig(config.epochs, config.batch_size, config.optimizer, config.lr, config.weight_decay,
                                 config.momentum, tuple(config.augment), config.seed, schedule="constant",
                                 crop_epochs=config.augment_epochs)
        super().__init__(self.task, transfer_set, loop_config, device, runtime, desc="transfer")

    def result(self) -> Classifier:
        return self.task.method.result(self.task.student)


@dataclass
class TransferOutcome:
    model: Classifier  # the transferred student (MCL: the slow weights)
    history: list[dict[str, Any]]  # epoch 0 = before transfer
    final: dict[str, Any]
    checkpoint: Path | None


def decoded_for(models: Sequence[Classifier], transfer_set: ImageDataset,
                test_set: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
    """Encoded images as a transfer between ``models`` reads them: each image decoded once into every model's
    own eval view (exactly its library's transform, as ``gkt analyze`` evaluates), for training and test
    alike. Teachers and the frozen student compute their targets on their own view, the student trains on its
    own; with photo augmentation (``--augment photo``) every view takes the same random crop. In-memory
    datasets come back as they are."""
    plan = decode_plan_for(m.preprocess for m in models)
    return transfer_set.at_decode_plan(plan), test_set.at_decode_plan(plan)


def run_transfer(student: Classifier, teacher: Classifier | Sequence[Classifier], transfer_set: ImageDataset,
                 test_set: ImageDataset, config: TransferConfig, device: torch.device, run_dir: Path | None = None,
                 resume: dict[str, Any] | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 runtime: Runtime | None = None) -> TransferOutcome:
    """Transfer ``teacher`` → ``student`` on ``transfer_set`` and evaluate on ``test_set`` after every epoch.
    With ``run_dir``: writes ``metrics.csv`` and ``state.pt`` per epoch, then ``final.json``
    and the transferred student as ``student.safetensors`` + ``.json``; a diverged run writes
    ``final.json`` with ``status: failed`` and no model. ``resume`` is a :func:`load_state` result.
    Several teachers (K-teacher methods): flips are measured against the teacher set, where a sample
    counts as known when any teacher gets it right (``acc_teacher`` is that oracle's accuracy).
    ``on_epoch`` receives every history row as it is made (epoch 0 included), e.g. for experiment trackers.
    Under ``torchrun`` (``runtime.dist``) every rank trains and evaluates its share; pass ``run_dir`` on
    rank 0 only."""
    start = time.perf_counter()
    runtime = runtime or Runtime()
    method = config.build_method()
    teachers = as_teachers(teacher)

    def predict(model: Classifier, dataset: ImageDataset, desc: str) -> torch.Tensor:
        """Logits over ``dataset``, each rank predicting its shard."""
        logits = predict_logits(model, runtime.dist.shard(dataset), device, desc=desc, precision=runtime.precision)
        return runtime.dist.gather_rows(logits.to(device), len(dataset)).cpu()

    if not runtime.dist.is_main:
        runtime.dist.barrier()  # rank 0 computes and stores the frozen models' test outputs first
    # The frozen models' test outputs come from the prediction store: a study's jobs share them.
    *stored_teachers, stored_before = get_many([*teachers, student], test_set, device, precision=runtime.precision,
                                               workers=runtime.loader_workers)
    if runtime.dist.is_main:
        runtime.dist.barrier()
    labels = test_set.labels  # read after a first pass: images skipped under --bad-images skip are dropped then
    correct_teacher = torch.stack([p.correct for p in stored_teachers]).any(0)
    correct_before = stored_before.correct
    trainer = TransferTrainer(student.clone(), teacher, method, config, device, transfer_set, runtime)
    history = [{"epoch": 0, **transfer_metrics(labels, correct_teacher, correct_before, correct_before)}]
    inputs = None if run_dir is None and resume is None else {  # what a resume must find again (hashing costs)
        "student": student.identity(), "teachers": [t.identity() for t in teachers],
        "data": [dataset_identity(transfer_set), dataset_identity(test_set)],
        "settings": {k: v for k, v in config.to_dict().items() if k != "epochs"}}  # --epochs may extend a run
    if resume is not None:
        check_same_inputs(resume.get("inputs"), inputs, student, teachers, config.epochs,
                          len(resume["history"]) - 1)
        trainer.load_state_dict(resume)
        history = list(resume["history"])
        if run_dir is not None:  # the epochs so far (rewritten after each further epoch)
            write_csv(run_dir / "metrics.csv", history)
    if on_epoch is not None:
        for row in history:
            on_epoch(row)
    quality = None
    if isinstance(method, PartitionMethod) and not config.unlabelled:
        every_row = torch.arange(len(transfer_set))

        def transfer_set_outputs(need: str, model: Classifier, desc: str) -> torch.Tensor:
            """The cached outputs where the trainer has them, else one forward pass."""
            cached = trainer.task.cached
            return cached[need](every_row).cpu() if need in cached else predict(model, transfer_set, desc)

        quality = partition_quality(*partition_of(
            method, transfer_set_outputs(TEACHER_LOGITS, trainer.task.teacher, "teacher (transfer set)"),
            transfer_set_outputs(FROZEN_LOGITS, student, "student (transfer set)"), transfer_set.labels))
    base = {"student": student.name, "teacher": " + ".join(t.name for t in teachers), "method": config.method,
            "method_args": method.hparams(), "acc_teacher": correct_teacher.double().mean().item(),
            "acc_student_before": correct_before.double().mean().item(), "test_samples": len(labels),
            "rho_pos_before": history[0]["rho_pos"], "rho_neg_before": history[0]["rho_neg"]}
    correct_after = None

    def end_of_epoch(loop: TrainLoop, losses: dict[str, float]) -> None:
        nonlocal correct_after
        row = {"epoch": trainer.epoch, **losses}
        if runtime.evaluate_every_epoch or trainer.epoch == config.epochs:
            correct_after = correctness(predict(trainer.result(), test_set, "evaluate"), labels)
            row |= transfer_metrics(labels, correct_teacher, correct_before, correct_after)
            log.info("epoch %d/%d: train loss %.4f acc %.2f%% Δtransf %+.2f gain %.2f loss %.2f", trainer.epoch,
                     config.epochs, losses["train_loss"], 100 * row["acc"], 100 * row["delta_transf"],
                     100 * row["knowledge_gain"], 100 * row["knowledge_loss"])
        row["seconds"] = round(time.perf_counter() - trainer.epoch_started, 2)
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if run_dir is not None:
            write_csv(run_dir / "metrics.csv", history)
            save_training_state(run_dir, {**trainer.state_dict(), "history": history, "inputs": inputs})

    try:
        trainer.run(end_of_epoch)
    except GktError as exc:
        if run_dir is not None:
            write_json(run_dir / "final.json", {"status": "failed", "error": str(exc), **base,
                                                "config": config.to_dict(), "history": history})
        raise
    if correct_after is None:  # resumed a run that had already finished and evaluated its epochs
        correct_after = correctness(predict(trainer.result(), test_set, "evaluate"), labels)
    final = {"status": "ok", **base, **{k: v for k, v in history[-1].items() if k != "seconds"},
             **transfer_rates(correct_teacher, correct_before, correct_after, labels, test_set.num_classes),
             "partition_quality": quality, "config": config.to_dict(),
             "seconds": round(time.perf_counter() - start, 1)}
    model = trainer.result().cpu().eval()
    model.provenance = {"transfer": {k: final[k] for k in ("student", "teacher", "method", "method_args",
                                                             "acc_student_before", "acc", "delta_transf")},
                        "student_provenance": student.provenance}
    checkpoint = None
    if run_dir is not None:
        checkpoint = save_checkpoint(model, run_dir / "student")
        final["checkpoint"] = f"file:{checkpoint.with_suffix('')}"
        write_json(run_dir / "final.json", final)
    return TransferOutcome(model, history, final, checkpoint)

