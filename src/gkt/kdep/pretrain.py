"""KDEP pre-training and fine-tuning of a student."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.data.datasets import ImageDataset
from gkt.engine.loop import Batch, LoopConfig, Runtime, Task, TrainLoop, evaluate, train_supervised
from gkt.engine.predictions import dataset_identity
from gkt.engine.state import load_training_state, save_training_state
from gkt.kdep.objectives import FEATURE_OBJECTIVES, OBJECTIVES, Objective, ObjectiveConfig, make_objective
from gkt.models import (
    ArchSpec,
    Classifier,
    DataInfo,
    ModelSpec,
    load_model,
)
from gkt.models.heads import with_new_head

log = logging.getLogger(__name__)


def parse_arch_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``zoo-arch:NAME[?k=v&...]`` or ``timm:ARCH[?k=v&...]`` → (source, name, kwargs); values are JSON
    (``widths=[8,16,32]``) or strings."""
    source, sep, rest = spec.partition(":")
    if source == "timm":
        parsed = ModelSpec.parse(spec)
        if parsed.weights:
            raise GktError(f"{spec}: a student architecture is randomly initialised; drop '@{parsed.weights}'")
        return "timm", parsed.target, dict(parsed.options)
    if source == "zoo-arch" and sep and rest:
        name, _, query = rest.partition("?")
        return "zoo", name, {k: _json_or_text(v) for k, v in parse_qsl(query, keep_blank_values=True)}
    raise GktError(f"student architecture {spec!r}: use zoo-arch:NAME[?k=v&...] (e.g. "
                   "zoo-arch:resnet?widths=[8,16,32]) or timm:ARCH[?k=v&...]")


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_student(spec: str, dataset: ImageDataset, class_names: Sequence[str] | None = None,
                  seed: int = 0) -> Classifier:
    """A randomly initialised classifier of architecture ``spec`` sized to ``dataset`` (input and
    normalisation) with ``class_names`` (default: the dataset's)."""
    source, name, kwargs = parse_arch_spec(spec)
    info = replace(DataInfo.from_dataset(dataset), class_names=tuple(class_names or dataset.class_names))
    torch.manual_seed(seed)
    if source == "timm":
        model = load_model(spec, info).train()
    else:
        arch = ArchSpec("zoo", name, len(info.class_names), info.channels, info.image_size, kwargs)
        model = Classifier.create(arch, info.preprocess(), info.class_names)
    model.name = f"student:{spec}"
    return model


def load_teacher(spec: str, dataset: ImageDataset) -> Classifier:
    """Any model spec as a teacher (eval mode). Its label space need not match the data: KDEP uses only
    features; ``timm:`` teachers are sized to ``dataset``."""
    info = DataInfo.from_dataset(dataset) if ModelSpec.parse(spec).source == "timm" else None
    return load_model(spec, info, check_labels=False).eval()


@dataclass
class PretrainResult:
    student: Classifier
    losses: list[float]
    seconds: float  # wall time of everything: teacher passes, alignment and training
    train_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class PretrainTask(Task):
    """KDEP pre-training as a task of the one training loop: the objective's loss on the student (the
    objective's own trainable parts, e.g. the learned alignment, are optimised with it). Logit-level
    objectives get the loop's wrapped (DDP, compiled) forward; feature objectives tap the student's
    layer eagerly, in one process."""

    state_format = "gkt-kdep-state/1"

    def __init__(self, student: Classifier, objective: Objective):
        self.student, self.objective = student, objective
        self.forward: Callable[[torch.Tensor], torch.Tensor] = student

    def parameters(self) -> list[nn.Parameter]:
        return [*self.student.parameters(), *self.objective.parameters()]

    def prepare(self, loop: TrainLoop) -> None:
        if loop.runtime.dist.enabled and isinstance(self.objective, FEATURE_OBJECTIVES):
            raise GktError("feature-distillation pre-training taps the student inside its forward pass and does not "
                           "run data-parallel; run it in one process")
        self.forward = loop.wrap(self.student)

    def train(self) -> None:
        self.student.train()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": self.objective.loss(self.forward, batch.x, batch.labels, batch.indices)}

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.net.state_dict(), "objective": self.objective.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.net.load_state_dict(state["student"])
        self.objective.load_state_dict(state["objective"])


def pretrain(student: Classifier, dataset: ImageDataset, objective_name: str, recipe: Recipe,
             device: torch.device, teacher: Classifier | None = None,
             cfg: ObjectiveConfig = ObjectiveConfig(), desc: str = "pretrain",
             runtime: Runtime | None = None, run_dir: Path | None = None,
             resume: dict[str, Any] | None = None) -> PretrainResult:
    """Pre-train ``student`` in place with an objective from :data:`OBJECTIVES` on the one training loop
    (SGD/AdamW, warm-up + cosine). Without augmentation the teacher's outputs are computed once per sample
    and cached by content (:class:`~gkt.engine.outputs_cache.CachedOutputs`), not per step. With
    ``run_dir`` the training state is saved after each epoch; ``resume`` (:func:`load_pretrain_state`)
    continues such a run, with the same student, teacher, data and settings, to the same weights."""
    start = time.perf_counter()
    runtime = runtime or Runtime()
    inputs = None if run_dir is None and resume is None else {  # what a resume must find again
        "student": student.identity(), "objective": objective_name,
        "teacher": teacher.identity() if teacher is not None and OBJECTIVES[objective_name].needs_teacher else None,
        "config": asdict(cfg), "recipe": {k: v for k, v in recipe.to_dict().items() if k != "epochs"}}
    if resume is not None:  # before the teacher's pass: a resume that cannot work fails at once
        _check_resumable(resume, inputs, recipe.epochs)
    student.to(device)
    objective = make_objective(objective_name, cfg, teacher, student, dataset, device,
                               precompute=runtime.cache_outputs and not recipe.augment)
    if inputs is not None:  # after the in-order passes, which leave unreadable images out (--bad-images skip)
        inputs["data"] = dataset_identity(dataset)
    if resume is not None:
        _check_resumable(resume, inputs, recipe.epochs, data=True)
    losses: list[float] = []

    def record(loop: TrainLoop, epoch_losses: dict[str, float]) -> None:
        losses.append(epoch_losses["train_loss"])
        log.info("%s epoch %d/%d loss %.4f", desc, loop.epoch, recipe.epochs, losses[-1])
        size = len(dataset)
        dataset.drop_unreadable()  # images found unreadable this epoch: left out from the next, as a resume lists it
        if inputs is not None and len(dataset) != size:
            inputs["data"] = dataset_identity(dataset)
        if run_dir is not None:
            save_training_state(run_dir, {**loop.state_dict(), "losses": losses, "inputs": inputs})

    loop = TrainLoop(PretrainTask(student, objective), dataset, LoopConfig.from_recipe(recipe), device, runtime, desc)
    if resume is not None:
        loop.load_state_dict(resume)
        losses = list(resume["losses"])
    train_start = time.perf_counter()
    loop.run(record)
    end = time.perf_counter()
    student.provenance = {**student.provenance, "kdep_pretrain": {
        "objective": objective_name, "recipe": recipe.to_dict(), "config": asdict(cfg), "data": dataset.name,
        "samples": len(dataset), "teacher": teacher.name if teacher is not None and objective.needs_teacher else None,
        **objective.extra()}}
    return PretrainResult(student.eval(), losses, end - start, end - train_start, objective.extra())


def load_pretrain_state(run_dir: str | Path) -> dict[str, Any]:
    """The last epoch's state of a ``gkt kdep pretrain`` run directory (for ``--resume``)."""
    state = load_training_state(run_dir, PretrainTask.state_format, "kdep pretrain run")
    if not isinstance(state.get("losses"), list) or not isinstance(state.get("inputs"), dict):
        raise GktError(f"{run_dir}: its state.pt is not a complete kdep pre-training state; start the run again")
    return state


def _check_resumable(resume: dict[str, Any], inputs: dict[str, Any] | None, epochs: int, data: bool = False) -> None:
    """Refuse a resume with fewer epochs than done, or other inputs than the run had (``data``: the data's
    identity too, known once the in-order passes have left unreadable images out)."""
    done = int(resume["epoch"])
    if done > epochs:
        raise GktError(f"the run to resume has done {done} epochs; give --epochs {done} or more (it extends a run, "
                       "it cannot shorten one)")
    recorded, inputs = resume["inputs"], inputs or {}
    checked = (("student", "the student (architecture or seed)"), ("teacher", "the teacher"),
               ("objective", "the objective"), ("config", "the objective's settings"),
               ("recipe", "the training recipe"), *((("data", "the data (its images or labels)"),) if data else ()))
    changed = [what for key, what in checked if recorded.get(key) != inputs.get(key)]
    if changed:
        raise GktError(f"the run to resume started with other inputs: {', '.join(changed)} changed since (other "
                       "weights, images or options); resuming would mix two runs: start a new run, or resume with "
                       "the data options (e.g. --data-dir) the run had")


def finetune(pretrained: Classifier, train: ImageDataset, test: ImageDataset, recipe: Recipe,
             device: torch.device, desc: str = "finetune", runtime: Runtime | None = None) -> tuple[Classifier, float]:
    """New head for ``train``'s classes, then the whole network is trained; returns (model, test acc)."""
    model = with_new_head(pretrained, train.class_names, seed=recipe.seed)
    train_supervised(model, train, recipe, device, desc=desc, runtime=runtime)
    return model.eval(), evaluate(model, test, device)
