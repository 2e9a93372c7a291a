"""K-teacher KL+DP (paper §4.3, parallel multi-teacher transfer): the greedy data partition of eqs. 4–5
extended to K teachers plus the frozen student — each sample is distilled from whichever of them is
most confident on it (true-class probability; maximum probability in the unsupervised variant)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gkt.transfer.base import (
    FROZEN_LOGITS,
    LABELS,
    TEACHERS_LOGITS,
    Step,
    TransferMethod,
    kl_loss,
    register_method,
)


def confidences(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """``[B, M]`` confidence of each of M models (``logits [B, M, C]``): the softmax probability (T = 1)
    of the true class, or the maximum probability when ``labels`` is None."""
    probs = F.softmax(logits, -1)
    if labels is None:
        return probs.amax(-1)
    return probs.gather(-1, labels[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(-1)


def select_sources(frozen_logits: torch.Tensor, teachers_logits: torch.Tensor,
                   labels: torch.Tensor | None) -> torch.Tensor:
    """``long [B]``: which model each sample is distilled from — 0 the frozen student, k the k-th teacher
    (1-based) of ``teachers_logits [B, K, C]``. Ties go to the earlier model (the student first), as in
    two-model KL+DP where the teacher must be strictly more confident."""
    candidates = torch.cat([frozen_logits[:, None], teachers_logits], 1)
    return confidences(candidates, labels).argmax(1)


@register_method("kl-dp-multi")
class KTeacherDataPartition(TransferMethod):
    """K-teacher KL+DP (parallel): each sample from the most confident (true class) of frozen student and teachers."""

    needs = frozenset({TEACHERS_LOGITS, FROZEN_LOGITS, LABELS})

    def sources(self, frozen_logits: torch.Tensor, teachers_logits: torch.Tensor,
                labels: torch.Tensor | None) -> torch.Tensor:
        """:func:`select_sources` with the labels only when the method uses them."""
        return select_sources(frozen_logits, teachers_logits, labels if self.uses_labels else None)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        frozen, teachers = step.targets[FROZEN_LOGITS], step.targets[TEACHERS_LOGITS]
        source = self.sources(frozen, teachers, step.labels)
        candidates = torch.cat([frozen[:, None], teachers], 1)
        target = candidates.gather(1, source[:, None, None].expand(-1, 1, candidates.shape[-1])).squeeze(1)
        return {"kl": kl_loss(step.student_logits, target, self.temperature)}


@register_method("kl-dp-multi-unsup")
class KTeacherDataPartitionUnsupervised(KTeacherDataPartition):
    """Unsupervised K-teacher KL+DP: the most confident (max probability) model per sample; never sees labels."""

    needs = frozenset({TEACHERS_LOGITS, FROZEN_LOGITS})
