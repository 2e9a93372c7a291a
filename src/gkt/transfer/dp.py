"""KL+DP (paper §4.2, eqs. 4–5): distil each sample from whichever of teacher and frozen student
is more confident on it — true-class probability (supervised) or maximum probability (unsupervised)."""

from __future__ import annotations

import torch

from gkt.transfer.base import (
    FROZEN_LOGITS,
    LABELS,
    TEACHER_LOGITS,
    PartitionMethod,
    Step,
    Targets,
    confidence,
    kl_loss_soft,
    register_method,
    select_targets,
    soft_targets,
)


@register_method("kl-dp")
class KLDataPartition(PartitionMethod):
    """KL+DP (eqs. 4-5): teacher where σ_y(z_t) > σ_y(z_st), else the frozen student; labels for the mask."""

    needs = frozenset({TEACHER_LOGITS, FROZEN_LOGITS, LABELS})

    def confidence(self, logits: Targets, labels: torch.Tensor | None) -> torch.Tensor:
        """Eq. 4: the softmax probability (T = 1) of the true class."""
        return confidence(logits, labels)

    def teacher_mask(self, teacher_logits: Targets, frozen_logits: Targets,
                     labels: torch.Tensor | None) -> torch.Tensor:
        return self.confidence(teacher_logits, labels) > self.confidence(frozen_logits, labels)

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Eq. 5 as one KL per sample against the sample's selected target (m_t·KL_t + m_st·KL_st): the
        mask and the selected soft targets depend only on the frozen outputs (and labels)."""
        teacher, frozen = targets[TEACHER_LOGITS], targets[FROZEN_LOGITS]
        mask = self.teacher_mask(teacher, frozen, labels)
        return soft_targets(select_targets(mask, teacher, frozen), self.temperature)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {"kl": kl_loss_soft(step.student_logits, step.targets, self.temperature)}


@register_method("kl-dp-unsup")
class KLDataPartitionUnsupervised(KLDataPartition):
    """Unsupervised KL+DP: the mask compares maximum softmax probabilities; never sees labels."""

    needs = frozenset({TEACHER_LOGITS, FROZEN_LOGITS})

    def confidence(self, logits: Targets, labels: torch.Tensor | None) -> torch.Tensor:
        return confidence(logits, None)
