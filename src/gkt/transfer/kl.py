"""Distillation baselines (paper §4.1, appendix B.1): KL, XE-KL, label smoothing, top-k KL, soft CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gkt.core.errors import GktError
from gkt.engine.sparse_targets import SparseTargets
from gkt.transfer.base import (
    LABELS,
    TARGET_LOG_PROBS,
    TARGET_PROBS,
    TEACHER_LOGITS,
    Step,
    TransferMethod,
    kl_loss,
    kl_loss_soft,
    kl_per_sample_soft,
    register_method,
    soft_targets,
)


def _check_weight(lam: float) -> None:
    if not 0 <= lam <= 1:
        raise GktError(f"lam must be in [0, 1], got {lam}")


@register_method("kl")
class KLDist(TransferMethod):
    """KL-Dist (eq. 1): match the teacher's soft targets; no labels."""

    needs = frozenset({TEACHER_LOGITS})

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return soft_targets(targets[TEACHER_LOGITS], self.temperature)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {"kl": kl_loss_soft(step.student_logits, step.targets, self.temperature)}


@register_method("xekl")
class XEKLDist(TransferMethod):
    """XE-KL-Dist (eq. 2): lam·KL + (1−lam)·cross-entropy on labels."""

    needs = frozenset({TEACHER_LOGITS, LABELS})

    def __init__(self, temperature: float = 1.0, lam: float = 0.5, smoothing: float = 0.0):
        super().__init__(temperature)
        _check_weight(lam)
        if not 0 <= smoothing < 1:
            raise GktError(f"smoothing must be in [0, 1), got {smoothing}")
        self.lam, self.smoothing = lam, smoothing

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return soft_targets(targets[TEACHER_LOGITS], self.temperature)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        kl = kl_loss_soft(step.student_logits, step.targets, self.temperature)
        xe = F.cross_entropy(step.student_logits, step.labels, label_smoothing=self.smoothing)
        return {"kl": self.lam * kl, "xe": (1 - self.lam) * xe}


@register_method("xekl-ls")
class XEKLLabelSmoothing(XEKLDist):
    """XE-KL with label smoothing on the cross-entropy term (baseline)."""

    def __init__(self, temperature: float = 1.0, lam: float = 0.5, smoothing: float = 0.1):
        super().__init__(temperature, lam, smoothing)


@register_method("kl-topk")
class TopKKL(TransferMethod):
    """KL restricted to the teacher's top-k classes, both distributions renormalised over them (app. B.1)."""

    needs = frozenset({TEACHER_LOGITS})

    def __init__(self, temperature: float = 1.0, k: int = 5):
        super().__init__(temperature)
        if k < 1:
            raise GktError(f"k must be >= 1, got {k}")
        self.k = k

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        teacher = step.targets[TEACHER_LOGITS]
        if isinstance(teacher, SparseTargets):  # the cache keeps the top-k logits of large label spaces
            if self.k > teacher.topk_indices.shape[-1]:
                raise GktError(f"kl-topk with k={self.k}: the output cache keeps the top "
                               f"{teacher.topk_indices.shape[-1]} logits of {teacher.num_classes} classes; use "
                               "k <= that, or --no-cache")
            top, values = teacher.topk_indices[..., :self.k], teacher.topk_logits[..., :self.k]
        else:
            top = teacher.topk(min(self.k, teacher.shape[-1]), dim=-1).indices
            values = teacher.gather(-1, top)
        return {"kl": kl_loss(step.student_logits.gather(-1, top), values, self.temperature)}


@register_method("ce-soft")
class SoftCrossEntropy(TransferMethod):
    """Cross-entropy on the teacher's soft targets instead of KL (appendix B.1); no labels."""

    needs = frozenset({TEACHER_LOGITS})

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return soft_targets(targets[TEACHER_LOGITS], self.temperature)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        """``−Σ p log σ(z_s/T)`` = the KL plus the target's entropy (the same gradient)."""
        t, targets = self.temperature, step.targets
        if TARGET_LOG_PROBS in targets:
            entropy = -(targets[TARGET_LOG_PROBS].exp() * targets[TARGET_LOG_PROBS]).sum(-1)
        else:
            entropy = -torch.special.xlogy(targets[TARGET_PROBS], targets[TARGET_PROBS]).sum(-1)
        ce = kl_per_sample_soft(step.student_logits, targets, t) + entropy
        return {"ce_soft": t ** 2 * ce.mean()}


@register_method("ce")
class CrossEntropyFineTuning(TransferMethod):
    """Plain cross-entropy fine-tuning on the labelled transfer set: the control without a teacher."""

    needs = frozenset({LABELS})

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {"xe": F.cross_entropy(step.student_logits, step.labels)}
