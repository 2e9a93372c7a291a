"""Transfer metrics (SPEC §2, paper §5.1, appendix B.2): Δtransf, knowledge gain/loss, Δρ_pos/Δρ_neg,
transfer rate on the classes holding the top-X% of complementary knowledge, DP partition quality;
and the per-epoch plot."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gkt.engine.metrics import correctness, flip_stats, knowledge_gain_loss
from gkt.transfer.base import PartitionMethod

TOP_SHARES = (0.02, 0.05, 0.2, 0.5, 1.0)


def classes_holding_share(counts: torch.Tensor, share: float) -> torch.Tensor:
    """The fewest classes (largest counts first) whose counts sum to at least ``share`` of the total."""
    order = counts.argsort(descending=True, stable=True)
    cumulative = counts[order].double().cumsum(0)
    needed = share * cumulative[-1]
    return order[: int((cumulative < needed - 1e-9).sum()) + 1]


def transfer_rates(correct_teacher: torch.Tensor, correct_before: torch.Tensor, correct_after: torch.Tensor,
                   labels: torch.Tensor, num_classes: int, shares: Sequence[float] = TOP_SHARES
                   ) -> dict[str, float]:
    """For each share X: of the positive flips (teacher right, original student wrong) in the classes
    holding the top-X% of all positive flips, the share the transferred student gets right (NaN when
    the teacher has no positive flips)."""
    positive = correct_teacher.bool() & ~correct_before.bool()
    counts = torch.bincount(labels[positive], minlength=num_classes)
    rates = {}
    for share in shares:
        key = f"transfer_rate_top{share * 100:g}"
        if counts.sum() == 0:
            rates[key] = math.nan
            continue
        selected = positive & torch.isin(labels, classes_holding_share(counts, share))
        rates[key] = correct_after.bool()[selected].double().mean().item()
    return rates


def transfer_metrics(labels: torch.Tensor, correct_teacher: torch.Tensor, correct_before: torch.Tensor,
                     correct_after: torch.Tensor) -> dict[str, float]:
    """Accuracy, Δtransf, knowledge gain/loss and flips before/after transfer, on one evaluation set."""
    before, after = flip_stats(correct_teacher, correct_before), flip_stats(correct_teacher, correct_after)
    gain, loss = knowledge_gain_loss(correct_before, correct_after)
    return {"acc": after.acc_student, "delta_transf": after.acc_student - before.acc_student,
            "knowledge_gain": gain, "knowledge_loss": loss, "rho_pos": after.rho_pos, "rho_neg": after.rho_neg,
            "delta_rho_pos": after.rho_pos - before.rho_pos, "delta_rho_neg": after.rho_neg - before.rho_neg}


def partition_quality(teacher_mask: torch.Tensor, correct_teacher: torch.Tensor, correct_frozen: torch.Tensor
                      ) -> dict[str, float]:
    """Share of positive-flip and of negative-flip samples that a DP mask assigns to the teacher (paper:
    72% / 9%), and the share of all samples it assigns to the teacher."""
    mask, t, s = teacher_mask.bool(), correct_teacher.bool(), correct_frozen.bool()
    return {"pos_flips_to_teacher": _mean_where(mask, t & ~s), "neg_flips_to_teacher": _mean_where(mask, s & ~t),
            "samples_to_teacher": mask.double().mean().item()}


def _mean_where(values: torch.Tensor, where: torch.Tensor) -> float:
    return values[where].double().mean().item() if where.any() else math.nan


def transfer_set_partition(method: PartitionMethod, teacher_logits: torch.Tensor, frozen_logits: torch.Tensor,
                           labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(teacher mask, teacher correct, frozen student correct) on the un-augmented transfer set."""
    mask = method.teacher_mask(teacher_logits, frozen_logits, labels if method.uses_labels else None)
    return mask, correctness(teacher_logits, labels), correctness(frozen_logits, labels)
