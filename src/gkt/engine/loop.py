"""The one training loop, and batched evaluation.

After timm's ``timm/task``: a :class:`Task` owns the models and the loss and turns one batch into a
dict of named losses; :class:`TrainLoop` owns everything else — data order, augmentation, optimiser and
learning-rate schedule, mixed precision, data-parallel ranks, compilation, progress, per-epoch callbacks
and the resumable training state. Zoo training and fine-tuning (:class:`SupervisedTask`), KDEP
pre-training (:mod:`gkt.kdep.pretrain`) and transfer (:mod:`gkt.transfer.trainer`) all run through it.
:class:`Runtime` says *how* a run executes without changing what it computes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.runtime import autocast, autocast_dtype
from gkt.data.augment import compose, split_augment
from gkt.data.datasets import ImageDataset, iterate_batches
from gkt.data.views import View, per_view
from gkt.engine.distributed import DistContext, sync_batchnorm
from gkt.models.classifier import Classifier
from gkt.models.preprocess import to_unit_float

log = logging.getLogger(__name__)

SGD_MOMENTUM = 0.9  # recipes without a momentum setting (zoo, fine-tuning, KDEP) use this


def make_optimizer(params: Iterable[nn.Parameter], name: str, lr: float, weight_decay: float,
                   momentum: float = SGD_MOMENTUM) -> torch.optim.Optimizer:
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


@dataclass(frozen=True)
class LoopConfig:
    """What the loop optimises with: epochs, batches, optimiser, schedule (``cosine``: linear warm-up then
    cosine to zero; ``constant``), augmentation and seed. Built from a :class:`Recipe` or a transfer config."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    augment: tuple[str, ...]
    seed: int
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    crop_epochs: int = 0  # photo augmentation: epoch e uses the crops of epoch e mod this (0: its own)

    @classmethod
    def from_recipe(cls, recipe: Recipe, schedule: str = "cosine") -> LoopConfig:
        return cls(recipe.epochs, recipe.batch_size, recipe.optimizer, recipe.lr, recipe.weight_decay, SGD_MOMENTUM,
                   tuple(recipe.augment), recipe.seed, schedule, recipe.warmup_epochs)


@dataclass(frozen=True)
class Runtime:
    """How a run executes, not what it computes: cached and uncached, compiled or not, one process or
    several, the results agree up to float rounding (reduced precision adds its own rounding)."""

    cache_outputs: bool = True  # reuse the frozen models' stored outputs when there is no augmentation
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (bf16 on a CUDA GPU that supports it, else fp32)
    channels_last: bool = False  # NHWC memory format for the models (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the trainable models' training forward
    loader_workers: int | None = None  # processes decoding encoded images (None: CPUs - 1, 1 to 8; 0: inline)
    evaluate_every_epoch: bool = True  # False: evaluate on the test split after the last epoch only (studies)
    dist: DistContext = field(default_factory=DistContext)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        return autocast_dtype(self.precision, device)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format


@dataclass
class Batch:
    """One training batch as a task sees it (tensors on the training device unless noted)."""

    x: torch.Tensor  # augmented images, float in [0, 1] (a canvas of the views of ``plan``)
    labels: torch.Tensor  # [B]
    indices: torch.Tensor  # [B] positions in the training set (CPU)
    generator: torch.Generator  # the loop's seeded CPU generator
    plan: tuple[View, ...] = ()  # the views ``x`` holds (the dataset's decode plan)

    def input_for(self, model: Classifier) -> torch.Tensor:
        """``model``'s normalised input: its own view of the batch where the plan holds it
        (:meth:`Classifier.input_of`)."""
        return model.input_of(self.x, self.plan)


class Task:
    """What one training run optimises: owns its models and loss, turns a :class:`Batch` into named
    losses (summed by the loop). Subclasses override :meth:`losses` and whichever hooks they need."""

    state_format = "gkt-train-state/1"
    divergence_hint = "lower the learning rate"

    def parameters(self) -> list[nn.Parameter]:
        """Everything the optimiser updates (frozen parameters are skipped by it)."""
        raise NotImplementedError

    def setup(self, loop: TrainLoop) -> None:
        """Build the parts that draw from torch's global RNG (the loop has just seeded it); before the optimiser."""

    def prepare(self, loop: TrainLoop) -> None:
        """Route the trainable forwards through ``loop.wrap`` (data-parallel ranks, compilation)."""

    def train(self) -> None:
        """Set the models' modes at the start of every epoch."""

    def begin_epoch(self, dataset: ImageDataset) -> None:
        """Called before each epoch with the data it reads (with photo augmentation: that epoch's crops)."""

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (``step`` counts from 0)."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


EpochCallback = Callable[["TrainLoop", dict[str, float]], None]


class TrainLoop:
    """Runs ``task`` on ``dataset`` for ``config.epochs`` epochs under ``runtime``; :meth:`run` calls every
    callback after each epoch with the epoch's mean losses; :meth:`state_dict` is a resumable snapshot."""

    def __init__(self, task: Task, dataset: ImageDataset, config: LoopConfig, device: torch.device,
                 runtime: Runtime | None = None, desc: str = "train"):
        self.runtime = runtime = runtime or Runtime()
        self.undo_sync: list[Callable[[], None]] = []  # filled by wrap, emptied at the end of run
        self.steps_per_epoch = len(dataset) // config.batch_size
        if self.steps_per_epoch == 0:
            raise GktError(f"{dataset.name}: {len(dataset)} samples is fewer than one batch of {config.batch_size}; "
                           f"lower --batch-size to {len(dataset)} or less, or give more data (a larger --fraction, "
                           "if it is below 1)")
        runtime.dist.shard_batch(config.batch_size)  # the global batch must split evenly over the ranks
        if config.schedule not in ("cosine", "constant"):
            raise GktError(f"unknown learning-rate schedule {config.schedule!r}; use cosine or constant")
        crop, batch_augment = split_augment(config.augment)
        if crop is not None:  # photo augmentation: crops drawn while decoding, per epoch and image
            dataset = dataset.with_crops(crop, config.seed)
        self.task, self.dataset, self.config, self.device, self.desc = task, dataset, config, device, desc
        torch.manual_seed(config.seed)  # dropout masks and a task's random parts follow the run's seed
        task.setup(self)
        self.optimizer = make_optimizer(task.parameters(), config.optimizer, config.lr, config.weight_decay,
                                        config.momentum)
        total, warmup = self.steps_per_epoch * config.epochs, int(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, (lambda s: 1.0) if config.schedule == "constant" else
            (lambda s: warmup_cosine(s, total, warmup)))
        self.autocast_dtype = runtime.autocast_dtype(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        task.prepare(self)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.augment = compose(batch_augment)
        self.batch_augment = bool(batch_augment)
        self.epoch = 0
        self.step = 0
        self.epoch_started = time.perf_counter()

    def wrap(self, module: nn.Module, compile: bool = True) -> Callable[..., Any]:
        """``module``'s training forward: in ``DistributedDataParallel`` when several ranks train and it has
        trainable parameters (its BatchNorm layers then normalise over the global batch until :meth:`run`
        ends), and compiled when the runtime asks (and ``compile``)."""
        wrapped: Callable[..., Any] = module
        if self.runtime.dist.enabled and any(p.requires_grad for p in module.parameters()):
            from torch.nn.parallel import DistributedDataParallel

            self.undo_sync.append(sync_batchnorm(module, self.runtime.dist))

            wrapped = DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        if compile and self.runtime.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def epoch_data(self, epoch: int) -> ImageDataset:
        """The data epoch ``epoch`` reads: with photo augmentation, the crops of that epoch (of ``epoch mod
        crop_epochs`` when the config fixes how many crop sets there are)."""
        k = self.config.crop_epochs
        return self.dataset.for_epoch(epoch % k if k else epoch)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.runtime.precision)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the data; returns the epoch mean of each loss (``loss_NAME``) and their sum
        (``train_loss``), averaged over every rank."""
        self.epoch_started = time.perf_counter()
        self.task.train()
        running: torch.Tensor | None = None  # per-loss sums, on the device: no host sync inside the loop
        dist, device = self.runtime.dist, self.device
        dataset = self.epoch_data(self.epoch)
        self.task.begin_epoch(dataset)
        plan = dataset.decode_plan
        batches = iterate_batches(dataset, self.config.batch_size, shuffle=True, generator=self.generator,
                                  drop_last=True, shard=(dist.rank, dist.world), workers=self.runtime.loader_workers,
                                  pin_memory=device.type == "cuda")
        for images, labels, indices in tqdm(batches, total=self.steps_per_epoch,
                                            desc=f"{self.desc} {self.epoch + 1}/{self.config.epochs}", leave=False,
                                            disable=None if dist.is_main else True):
            x = to_unit_float(images.to(device, non_blocking=True))
            if self.batch_augment:  # the same draws for every view of a canvas
                x = per_view(lambda b: self.augment(b, self.generator), x, plan, self.generator)
            with self.autocast():
                losses = self.task.losses(Batch(x, labels.to(device, non_blocking=True), indices, self.generator,
                                                plan))
                if len(losses) == 1:  # the common case, without a stack and a sum per step
                    total = next(iter(losses.values())).float()
                    parts = total.reshape(1)
                else:
                    parts = torch.stack([v.float() for v in losses.values()])
                    total = parts.sum()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():  # fp16 only
                self.scaler.scale(total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                total.backward()
                self.optimizer.step()
            if self.config.schedule != "constant":
                self.scheduler.step()
            self.task.after_step(self.step)
            self.step += 1
            running = parts.detach().clone() if running is None else running.add_(parts.detach())
        self.epoch += 1
        means = (dist.sum(running) / (self.steps_per_epoch * dist.world)).tolist()
        if not all(map(math.isfinite, means)):  # a NaN/inf loss anywhere in the epoch poisons its sum
            parts_text = ", ".join(f"{k}={v:.4g}" for k, v in zip(losses, means))
            raise GktError(f"{self.desc} loss became non-finite in epoch {self.epoch} (epoch means: {parts_text}); "
                           f"{self.task.divergence_hint}")
        return {"train_loss": sum(means), **{f"loss_{k}": v for k, v in zip(losses, means)}}

    def run(self, *callbacks: EpochCallback) -> None:
        """Train the remaining epochs (all, unless resumed), calling every callback after each one. The
        models leave with their own BatchNorm layers (see :meth:`wrap`)."""
        try:
            while self.epoch < self.config.epochs:
                losses = self.train_epoch()
                for callback in callbacks:
                    callback(self, losses)
        finally:
            while self.undo_sync:
                self.undo_sync.pop()()

    def state_dict(self) -> dict[str, Any]:
        state = {"format": self.task.state_format, "epoch": self.epoch, "step": self.step, **self.task.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "scaler": self.scaler.state_dict()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != self.task.state_format:
            raise GktError(f"not a {self.task.state_format} training state (format {state.get('format')!r})")
        try:
            self.task.load_state_dict(state)
            self.optimizer.load_state_dict(state["optimizer"])
            if "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["generator"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # wrong shapes or a damaged state
            raise GktError(f"the saved training state does not fit this model and method ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the run cannot be resumed: "
                           "start it again") from None


class SupervisedTask(Task):
    """Cross-entropy on the labels (zoo training, fine-tuning, convergence checks)."""

    def __init__(self, model: Classifier, label_smoothing: float = 0.0):
        self.model, self.label_smoothing = model, label_smoothing
        self.forward: Callable[[torch.Tensor], torch.Tensor] = model

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def setup(self, loop: TrainLoop) -> None:
        self.model.to(loop.device, memory_format=loop.runtime.memory_format)

    def prepare(self, loop: TrainLoop) -> None:
        self.forward = loop.wrap(self.model)

    def train(self) -> None:
        self.model.train()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.forward(batch.x, batch.input_for(self.model))
        return {"xe": F.cross_entropy(logits, batch.labels, label_smoothing=self.label_smoothing)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.net.load_state_dict(state["model"])


@dataclass
class EpochStats:
    epoch: int
    loss: float
    seconds: float
    test_acc: float | None = None
    extra: dict = field(default_factory=dict)


def train_supervised(model: Classifier, dataset: ImageDataset, recipe: Recipe, device: torch.device,
                     eval_set: ImageDataset | None = None, desc: str = "train",
                     constant_lr: bool = False, runtime: Runtime | None = None) -> list[EpochStats]:
    """Train ``model`` in place with cross-entropy under ``recipe``; returns per-epoch statistics."""
    history: list[EpochStats] = []

    def record(loop: TrainLoop, losses: dict[str, float]) -> None:
        stats = EpochStats(loop.epoch, losses["train_loss"], time.perf_counter() - loop.epoch_started)
        if eval_set is not None:
            stats.test_acc = evaluate(model, eval_set, device)
        log.info("%s epoch %d/%d loss %.4f%s (%.1fs)", desc, loop.epoch, recipe.epochs, stats.loss,
                 f" acc {stats.test_acc:.4f}" if stats.test_acc is not None else "", stats.seconds)
        history.append(stats)

    config = LoopConfig.from_recipe(recipe, "constant" if constant_lr else "cosine")
    TrainLoop(SupervisedTask(model, recipe.label_smoothing), dataset, config, device, runtime, desc).run(record)
    return history


@torch.no_grad()
def predict_outputs(model: Classifier, dataset: ImageDataset, device: torch.device, batch_size: int = 1000,
                    desc: str | None = None, fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    precision: str = "fp32") -> torch.Tensor:
    """``fn(images)`` (default: ``model``'s logits, from its own view where ``dataset`` is decoded with a
    decode plan) over ``dataset`` in order, float32 on the CPU, with
    ``model`` in eval mode, no gradients and autocast in ``precision``. Images skipped under
    ``--bad-images skip`` are dropped from ``dataset`` by the pass, so read ``dataset.labels`` after it."""
    plan = dataset.decode_plan
    if fn is not None and len(plan) > 1:
        raise ValueError(f"{dataset.name}: a custom output function needs one decoded view, not a plan of {len(plan)}")
    was_training = model.training
    model.to(device).eval()
    fn = fn or (lambda x: model(x, model.input_of(x, plan)))
    with autocast(device, precision):
        chunks = [fn(images.to(device, non_blocking=True)).float().cpu()
                  for images, _, _ in tqdm(iterate_batches(dataset, batch_size), desc=desc or "predict", leave=False,
                                           total=math.ceil(len(dataset) / batch_size), disable=None)]
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, model.num_classes)


def predict_logits(model: Classifier, dataset: ImageDataset, device: torch.device, batch_size: int = 1000,
                   desc: str | None = None, precision: str = "fp32") -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) of ``model`` over ``dataset`` in order (see :func:`predict_outputs`)."""
    return predict_outputs(model, dataset, device, batch_size, desc, precision=precision)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def evaluate(model: Classifier, dataset: ImageDataset, device: torch.device, precision: str = "fp32") -> float:
    return accuracy(predict_logits(model, dataset, device, precision=precision), dataset.labels)
