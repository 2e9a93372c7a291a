"""K-teacher KL+DP (paper §4.3, parallel multi-teacher transfer): the greedy data partition of eqs. 4–5
extended to K teachers plus the frozen student — each sample is distilled from whichever of them is
most confident on it (true-class probability; maximum probability in the unsupervised variant)."""

from __future__ import annotations

import torch

from gkt.engine.sparse_targets import SparseTargets
from gkt.transfer.base import (
    FROZEN_LOGITS,
    LABELS,
    TEACHERS_LOGITS,
    Step,
    Targets,
    TransferMethod,
    confidence,
    kl_loss_soft,
    register_method,
    soft_targets,
)


def confidences(logits: Targets, labels: torch.Tensor | None) -> torch.Tensor:
    """``[B, M]`` confidence of each of M models (``logits [B, M, C]``, or stacked sparse targets): the
    softmax probability (T = 1) of the true class, or the maximum probability when ``labels`` is None."""
    return confidence(logits, labels)


def candidates_of(frozen: Targets, teachers: Targets) -> Targets:
    """The frozen student and the K teachers stacked, ``[B, 1 + K, ...]`` (frozen first)."""
    if isinstance(frozen, SparseTargets) and isinstance(teachers, SparseTargets):
        return SparseTargets.combine(lambda ts: torch.cat(ts, 1), [frozen.apply(lambda t: t[:, None]), teachers])
    if isinstance(frozen, SparseTargets) or isinstance(teachers, SparseTargets):
        raise ValueError("cannot mix cached sparse targets with logits")
    return torch.cat([frozen[:, None], teachers], 1)


def select_sources(frozen_logits: Targets, teachers_logits: Targets, labels: torch.Tensor | None) -> torch.Tensor:
    """``long [B]``: which model each sample is distilled from — 0 the frozen student, k the k-th teacher
    (1-based) of ``teachers_logits [B, K, C]``. Ties go to the earlier model (the student first), as in
    two-model KL+DP where the teacher must be strictly more confident."""
    return confidences(candidates_of(frozen_logits, teachers_logits), labels).argmax(1)


@register_method("kl-dp-multi")
class KTeacherDataPartition(TransferMethod):
    """K-teacher KL+DP (parallel): each sample from the most confident (true class) of frozen student and teachers."""

    needs = frozenset({TEACHERS_LOGITS, FROZEN_LOGITS, LABELS})

    def sources(self, frozen_logits: Targets, teachers_logits: Targets, labels: torch.Tensor | None) -> torch.Tensor:
        """:func:`select_sources` with the labels only when the method uses them."""
        return select_sources(frozen_logits, teachers_logits, labels if self.uses_labels else None)

    def prepare_targets(self, targets: dict[str, torch.Tensor], labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The soft targets of each sample's selected model (they depend only on the frozen outputs)."""
        frozen, teachers = targets[FROZEN_LOGITS], targets[TEACHERS_LOGITS]
        source = self.sources(frozen, teachers, labels)
        candidates = candidates_of(frozen, teachers)
        if isinstance(candidates, SparseTargets):
            return soft_targets(candidates.pick(source), self.temperature)
        target = candidates.gather(1, source[:, None, None].expand(-1, 1, candidates.shape[-1])).squeeze(1)
        return soft_targets(target, self.temperature)

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {"kl": kl_loss_soft(step.student_logits, step.targets, self.temperature)}


@register_method("kl-dp-multi-unsup")
class KTeacherDataPartitionUnsupervised(KTeacherDataPartition):
    """Unsupervised K-teacher KL+DP: the most confident (max probability) model per sample; never sees labels."""

    needs = frozenset({TEACHERS_LOGITS, FROZEN_LOGITS})
