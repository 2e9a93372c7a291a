"""Supervised training and batched evaluation."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.runtime import autocast
from gkt.data.augment import compose
from gkt.data.datasets import ImageDataset, iterate_batches
from gkt.models.classifier import Classifier
from gkt.models.preprocess import to_unit_float

log = logging.getLogger(__name__)


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (Nesterov-free, momentum) or AdamW; weight decay only on matrices/kernels, not on norms/biases."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise GktError(f"unknown optimizer {name!r}; use sgd or adamw")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay that reaches 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class EpochStats:
    epoch: int
    loss: float
    seconds: float
    test_acc: float | None = None
    extra: dict = field(default_factory=dict)


def train_supervised(model: Classifier, dataset: ImageDataset, recipe: Recipe, device: torch.device,
                     eval_set: ImageDataset | None = None, desc: str = "train",
                     constant_lr: bool = False) -> list[EpochStats]:
    """Train ``model`` in place with cross-entropy under ``recipe``; returns per-epoch statistics."""
    model.to(device).train()
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    augment = compose(recipe.augment)
    optimizer = make_optimizer(model.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay)
    steps_per_epoch = len(dataset) // recipe.batch_size
    if steps_per_epoch == 0:
        raise GktError(f"{dataset.name}: {len(dataset)} samples is fewer than one batch of {recipe.batch_size}")
    total = steps_per_epoch * recipe.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0 if constant_lr else warmup_cosine(s, total, int(recipe.warmup_epochs * steps_per_epoch)))
    history = []
    for epoch in range(recipe.epochs):
        start = time.perf_counter()
        model.train()
        running = torch.zeros((), device=device)
        batches = iterate_batches(dataset, recipe.batch_size, shuffle=True, generator=generator, drop_last=True)
        for images, labels, _ in tqdm(batches, total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{recipe.epochs}",
                                      leave=False, disable=None):
            x = augment(to_unit_float(images.to(device, non_blocking=True)), generator)
            loss = F.cross_entropy(model(x), labels.to(device, non_blocking=True),
                                   label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.detach()
        mean_loss = (running / steps_per_epoch).item()
        if not math.isfinite(mean_loss):
            raise GktError(f"{desc}: training loss became {mean_loss} in epoch {epoch + 1}; lower the learning rate")
        stats = EpochStats(epoch + 1, mean_loss, time.perf_counter() - start)
        if eval_set is not None:
            stats.test_acc = evaluate(model, eval_set, device)
        log.info("%s epoch %d/%d loss %.4f%s (%.1fs)", desc, epoch + 1, recipe.epochs, mean_loss,
                 f" acc {stats.test_acc:.4f}" if stats.test_acc is not None else "", stats.seconds)
        history.append(stats)
    return history


@torch.no_grad()
def predict_logits(model: Classifier, dataset: ImageDataset, device: torch.device, batch_size: int = 1000,
                   desc: str | None = None, precision: str = "fp32") -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) of ``model`` over ``dataset`` in order; eval mode, no grad,
    autocast in ``precision``. Images skipped under ``--bad-images skip`` are dropped from ``dataset``
    by the pass, so read ``dataset.labels`` after it."""
    was_training = model.training
    model.to(device).eval()
    with autocast(device, precision):
        chunks = [model(images.to(device, non_blocking=True)).float().cpu()
                  for images, _, _ in tqdm(iterate_batches(dataset, batch_size), desc=desc or "predict", leave=False,
                                           total=math.ceil(len(dataset) / batch_size), disable=None)]
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, model.num_classes)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def evaluate(model: Classifier, dataset: ImageDataset, device: torch.device, precision: str = "fp32") -> float:
    return accuracy(predict_logits(model, dataset, device, precision=precision), dataset.labels)
