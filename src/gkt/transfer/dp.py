"""KL+DP (paper §4.2, eqs. 4–5): distil each sample from whichever of teacher and frozen student
is more confident on it — true-class probability (supervised) or maximum probability (unsupervised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gkt.transfer.base import (
    FROZEN_LOGITS,
    LABELS,
    TEACHER_LOGITS,
    PartitionMethod,
    Step,
    kl_loss_soft,
    register_method,
    soft_targets,
)


@register_method("kl-dp")
class KLDataPartition(PartitionMethod):
    """KL+DP (eqs. 4-5): teacher where σ_y(z_t) > σ_y(z_st), else the frozen student; labels for the mask."""

    needs = frozenset({TEACHER_LOGITS, FROZEN_LOGITS, LABELS})

    def confidence(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Eq. 4: the softmax probability (T = 1) of the true class."""
        return F.softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)

    def teacher_mask(self, teacher_logits: torch.Tensor, frozen_logits: torch.Tensor,
                     labels: torch.Tensor | None) -> torch.Tensor:
        return self.confidence(teacher_logits, labels) > self.confidence(frozen_logits, labels)

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Eq. 5 as one KL per sample against the sample's selected target (m_t·KL_t + m_st·KL_st): the
        mask and the selected soft targets depend only on the frozen outputs (and labels)."""
        teacher, frozen = targets[TEACHER_LOGITS], targets[FROZEN_LOGITS]
        mask = self.teacher_mask(teacher, frozen, labels)
        return soft_targets(torch.where(mask[:, None], teacher, frozen), self.temperature)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {"kl": kl_loss_soft(step.student_logits, step.targets, self.temperature)}


@register_method("kl-dp-unsup")
class KLDataPartitionUnsupervised(KLDataPartition):
    """Unsupervised KL+DP: the mask compares maximum softmax probabilities; never sees labels."""

    needs = frozenset({TEACHER_LOGITS, FROZEN_LOGITS})

    def confidence(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return F.softmax(logits, -1).amax(-1)
