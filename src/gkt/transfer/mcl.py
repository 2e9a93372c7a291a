"""XE-KL + MCL (paper §4.2, eq. 3): momentum weight interpolation. The trainer updates the fast
weights with XE-KL; every N steps ``θ_slow ← τ·θ_slow + (1−τ)·θ_fast``; the slow weights (a copy of
the pretrained student at the start) are the result."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gkt.core.errors import GktError
from gkt.models.classifier import Classifier
from gkt.transfer.base import (
    FROZEN_LOGITS,
    LABELS,
    TEACHER_LOGITS,
    Step,
    TransferMethod,
    kl_per_sample_soft,
    predicted_class,
    register_method,
    soft_targets,
)

KL_WEIGHT = "kl_weight"  # prepared per sample: 0 drops a negative flip's KL (drop_negative_flips), else 1


@torch.no_grad()
def interpolate_weights(slow: torch.nn.Module, fast: torch.nn.Module, tau: float) -> None:
    """Eq. 3 on every floating-point parameter and buffer: ``slow ← τ·slow + (1−τ)·fast``; integer
    buffers (BatchNorm's step counter) are copied."""
    fast_state = fast.state_dict()
    for name, value in slow.state_dict().items():
        if value.is_floating_point():
            value.lerp_(fast_state[name], 1 - tau)
        else:
            value.copy_(fast_state[name])


@register_method("xekl-mcl")
class XEKLMomentumInterpolation(TransferMethod):
    """XE-KL + MCL (eq. 3): slow weights τ-interpolated towards the trained ones every N steps."""

    needs = frozenset({TEACHER_LOGITS, LABELS})

    def __init__(self, temperature: float = 1.0, lam: float = 0.7, tau: float = 0.99, every: int = 2,
                 drop_negative_flips: bool = False):
        super().__init__(temperature)
        if not 0 <= lam <= 1 or not 0 <= tau < 1 or every < 1:
            raise GktError(f"xekl-mcl needs 0 <= lam <= 1, 0 <= tau < 1, every >= 1; got {lam}, {tau}, {every}")
        self.lam, self.tau, self.every, self.drop_negative_flips = lam, tau, every, drop_negative_flips
        if drop_negative_flips:  # the official code's variant: needs the frozen student to find them
            self.needs = self.needs | {FROZEN_LOGITS}
        self.slow: Classifier | None = None

    def setup(self, student: Classifier, teacher: Classifier, num_samples: int, example: torch.Tensor) -> None:
        self.slow = student.clone().eval().requires_grad_(False)

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        teacher = targets[TEACHER_LOGITS]
        prepared = soft_targets(teacher, self.temperature)
        if self.drop_negative_flips:  # samples the frozen student gets right and the teacher wrong
            frozen_right = predicted_class(targets[FROZEN_LOGITS]) == labels
            prepared[KL_WEIGHT] = (~(frozen_right & (predicted_class(teacher) != labels))).float()
        return prepared

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        kl = kl_per_sample_soft(step.student_logits, step.targets, self.temperature)
        if KL_WEIGHT in step.targets:
            kl = kl * step.targets[KL_WEIGHT]
        xe = F.cross_entropy(step.student_logits, step.labels)
        return {"kl": self.lam * self.temperature ** 2 * kl.mean(), "xe": (1 - self.lam) * xe}

    def after_step(self, student: Classifier, step_index: int) -> None:
        if (step_index + 1) % self.every == 0:
            interpolate_weights(self.slow, student, self.tau)

    def result(self, student: Classifier) -> Classifier:
        return self.slow
