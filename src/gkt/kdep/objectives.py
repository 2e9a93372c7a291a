"""KDEP pre-training objectives: feature distillation and its baselines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gkt.core.errors import GktError
from gkt.core.registry import Registry
from gkt.data.datasets import ImageDataset, iterate_batches
from gkt.kdep.alignment import fit_alignment, power_temperature_scaling
from gkt.models import (
    Classifier,
)
from gkt.models.features import FeatureTap


@dataclass(frozen=True)
class ObjectiveConfig:
    """Options of the pre-training objectives (KDEP defaults from the official code)."""

    loss_w: float = 3.0
    pts_temperature: float = 0.1
    pts_power: float = 3.0
    kd_temperature: float = 4.0
    teacher_layer: str = "auto"
    student_layer: str = "auto"
    cache_alignment: bool = True


class Objective(nn.Module):
    """A pre-training loss on a batch; may own trainable parameters (dropped after pre-training)."""

    uses_labels = False
    needs_teacher = True

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        return {}


class TeacherOutputs:
    """Raw teacher outputs for a batch, transformed into targets. Un-augmented pre-training sees exactly
    ``dataset[idx]``, so the outputs come from a table computed in one pass; augmented batches run the
    teacher (eval, no grad) on the fly."""

    def __init__(self, teacher_fn: Callable[[torch.Tensor], torch.Tensor], dataset: ImageDataset,
                 device: torch.device, precompute: bool, batch_size: int = 500):
        self.teacher_fn = teacher_fn
        self.table: torch.Tensor | None = None
        if precompute:
            with torch.no_grad():
                self.table = torch.cat([teacher_fn(images.to(device)).float() for images, _, _ in
                                        iterate_batches(dataset, batch_size)])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx.to(self.table.device)] if self.table is not None else self.teacher_fn(x)


class _FeatureDistillation(Objective):
    """Shared part of KDEP and the learned-alignment baseline: teacher and student taps, the teacher's
    raw features (table or on the fly) and ``μ`` (+ ``V``) from the SVD alignment."""

    def __init__(self, cfg: ObjectiveConfig, teacher: Classifier, student: Classifier, dataset: ImageDataset,
                 device: torch.device, precompute: bool):
        super().__init__()
        self.cfg = cfg
        teacher.to(device).eval()
        self.teacher_tap = FeatureTap(teacher, cfg.teacher_layer)
        self.student_tap = FeatureTap(student, cfg.student_layer)
        self.features = TeacherOutputs(self.teacher_tap, dataset, device, precompute)
        start = time.perf_counter()
        self.alignment = fit_alignment(self.teacher_tap, dataset, device, cache=cfg.cache_alignment,
                                       features=self.features.table)
        self.alignment_seconds = time.perf_counter() - start
        self.register_buffer("mean", self.alignment.mean.to(device))

    def scaled(self, t: torch.Tensor) -> torch.Tensor:
        return power_temperature_scaling(t, self.cfg.pts_temperature, self.cfg.pts_power)

    def extra(self) -> dict[str, Any]:
        return {"teacher_layer": self.teacher_tap.describe(), "student_layer": self.student_tap.describe(),
                "teacher_dim": self.teacher_tap.dim, "student_dim": self.student_tap.dim,
                "alignment_seconds": round(self.alignment_seconds, 2)}


class KdepObjective(_FeatureDistillation):
    """``loss_w · MSE(f_s(x), PTS((f_t(x) − μ) P))`` with the SVD alignment ``P = V[:, :d_s]``."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.register_buffer("projection", self.alignment.projection(self.student_tap.dim).to(self.mean.device))

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        target = self.scaled((self.features(x, idx).to(x.device) - self.mean) @ self.projection)
        return self.cfg.loss_w * F.mse_loss(self.student_tap(x), target)

    def extra(self) -> dict[str, Any]:
        s, d_s, rank = self.alignment.singular_values, self.student_tap.dim, self.alignment.components.shape[1]
        return {**super().extra(), "rank": int(rank), "zero_padded_dims": max(0, d_s - int(rank)),
                "explained_variance": round((s[:d_s].pow(2).sum() / s.pow(2).sum()).item(), 4)}


class LinearAlignObjective(_FeatureDistillation):
    """Baseline: a learned linear (1×1) projection ``W: d_s → d_t`` of the student feature regressed on
    the PTS-scaled centred teacher feature (same targets as KDEP before projection; only the alignment
    differs). ``W`` is trained with the student and dropped afterwards."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.projector = nn.Linear(self.student_tap.dim, self.teacher_tap.dim).to(self.mean.device)

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        target = self.scaled(self.features(x, idx).to(x.device) - self.mean)
        return self.cfg.loss_w * F.mse_loss(self.projector(self.student_tap(x)), target)


class LogitKdObjective(Objective):
    """Baseline: Hinton KD, ``T² · KL(σ(z_t/T) ‖ σ(z_s/T))``; the student's head predicts the teacher's
    classes."""

    def __init__(self, cfg: ObjectiveConfig, teacher: Classifier, student: Classifier, dataset: ImageDataset,
                 device: torch.device, precompute: bool):
        super().__init__()
        if student.num_classes != teacher.num_classes:
            raise GktError(f"logit KD needs a student head over the teacher's {teacher.num_classes} classes "
                           f"(the student predicts {student.num_classes})")
        self.temperature = cfg.kd_temperature
        self.logits = TeacherOutputs(teacher.to(device).eval(), dataset, device, precompute)

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        teacher = self.logits(x, idx).to(x.device)
        return t * t * F.kl_div(F.log_softmax(student(x) / t, 1), F.log_softmax(teacher / t, 1),
                                log_target=True, reduction="batchmean")


class SupervisedObjective(Objective):
    """Baseline: cross-entropy on the pre-training labels."""

    uses_labels = True
    needs_teacher = False

    def __init__(self, *args: Any):
        super().__init__()

    def loss(self, student: Classifier, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student(x), labels)


OBJECTIVES: Registry[type[Objective]] = Registry("pre-training objective")
OBJECTIVES.update({"kdep": KdepObjective, "linear-align": LinearAlignObjective, "logit-kd": LogitKdObjective,
                   "supervised": SupervisedObjective})


def make_objective(name: str, cfg: ObjectiveConfig, teacher: Classifier | None, student: Classifier,
                   dataset: ImageDataset, device: torch.device, precompute: bool) -> Objective:
    if OBJECTIVES[name].needs_teacher and teacher is None:
        raise GktError(f"objective {name!r} needs a teacher (--teacher SPEC)")
    return OBJECTIVES[name](cfg, teacher, student, dataset, device, precompute)
