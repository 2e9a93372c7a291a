"""KDEP pre-training and fine-tuning of a student."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

import torch
from tqdm.auto import tqdm

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.data.augment import compose
from gkt.data.datasets import ImageDataset, iterate_batches
from gkt.engine.loop import evaluate, make_optimizer, train_supervised, warmup_cosine
from gkt.kdep.objectives import ObjectiveConfig, make_objective
from gkt.models import (
    ArchSpec,
    Classifier,
    DataInfo,
    ModelSpec,
    load_model,
)
from gkt.models.heads import with_new_head
from gkt.models.preprocess import to_unit_float

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
    return load_model(spec, info).eval()


@dataclass
class PretrainResult:
    student: Classifier
    losses: list[float]
    seconds: float  # wall time of everything: teacher passes, alignment and training
    train_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def pretrain(student: Classifier, dataset: ImageDataset, objective_name: str, recipe: Recipe,
             device: torch.device, teacher: Classifier | None = None,
             cfg: ObjectiveConfig = ObjectiveConfig(), desc: str = "pretrain") -> PretrainResult:
    """Pre-train ``student`` in place with an objective from :data:`OBJECTIVES` (SGD/AdamW, warm-up +
    cosine). Without augmentation the teacher's outputs are computed once per sample, not per step."""
    start = time.perf_counter()
    student.to(device)
    objective = make_objective(objective_name, cfg, teacher, student, dataset, device,
                               precompute=not recipe.augment)
    steps_per_epoch = len(dataset) // recipe.batch_size
    if steps_per_epoch == 0:
        raise GktError(f"{dataset.name}: {len(dataset)} samples is fewer than one batch of {recipe.batch_size}")
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    augment = compose(recipe.augment)
    optimizer = make_optimizer([*student.parameters(), *objective.parameters()], recipe.optimizer, recipe.lr,
                               recipe.weight_decay)
    total = steps_per_epoch * recipe.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total, int(recipe.warmup_epochs * steps_per_epoch)))
    train_start = time.perf_counter()
    losses = []
    student.train()
    for epoch in range(recipe.epochs):
        running = torch.zeros((), device=device)
        for images, labels, idx in tqdm(iterate_batches(dataset, recipe.batch_size, shuffle=True, generator=generator,
                                                        drop_last=True), total=steps_per_epoch,
                                        desc=f"{desc} {epoch + 1}/{recipe.epochs}", leave=False, disable=None):
            x = augment(to_unit_float(images.to(device, non_blocking=True)), generator)
            loss = objective.loss(student, x, labels.to(device), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.detach()
        losses.append((running / steps_per_epoch).item())
        if not math.isfinite(losses[-1]):
            raise GktError(f"{desc}: loss became {losses[-1]} in epoch {epoch + 1}; lower the learning rate")
        log.info("%s epoch %d/%d loss %.4f", desc, epoch + 1, recipe.epochs, losses[-1])
    end = time.perf_counter()
    student.provenance = {**student.provenance, "kdep_pretrain": {
        "objective": objective_name, "recipe": recipe.to_dict(), "config": asdict(cfg), "data": dataset.name,
        "samples": len(dataset), "teacher": teacher.name if teacher is not None and objective.needs_teacher else None,
        **objective.extra()}}
    return PretrainResult(student.eval(), losses, end - start, end - train_start, objective.extra())


def finetune(pretrained: Classifier, train: ImageDataset, test: ImageDataset, recipe: Recipe,
             device: torch.device, desc: str = "finetune") -> tuple[Classifier, float]:
    """New head for ``train``'s classes, then the whole network is trained; returns (model, test acc)."""
    model = with_new_head(pretrained, train.class_names, seed=recipe.seed)
    train_supervised(model, train, recipe, device, desc=desc)
    return model.eval(), evaluate(model, test, device)
