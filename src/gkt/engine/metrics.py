"""Prediction-flip arithmetic (paper §3, appendix B.2), vectorised over samples and model pairs.

All functions take boolean *correctness* tensors (prediction == label), so they work the same on
stored predictions, on live models and on hand-made test cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def correctness(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``bool [..., N]``: argmax of ``logits [..., N, C]`` equals ``labels [N]``."""
    return logits.argmax(-1) == labels


def pairwise_flips(correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``correct: bool [M, N]`` (M models, N samples) return ``(rho_pos, rho_neg)``, both ``[M, M]``:
    ``rho_pos[t, s]`` = share of samples teacher ``t`` gets right and student ``s`` wrong;
    ``rho_neg[t, s] = rho_pos[s, t]``."""
    c = correct.double()
    rho_pos = (c @ (1 - c).T) / correct.shape[1]
    return rho_pos, rho_pos.T.contiguous()


def pairwise_class_flips(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[M, M, K]``: for each class k, the share of class-k samples that model t gets right and model s
    wrong (the per-class complementary knowledge of t for s)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).double()  # [N, K]
    counts = onehot.sum(0).clamp_min(1)
    c = correct.double()
    right_by_class = c[:, :, None] * onehot[None]  # [M, N, K]
    return torch.einsum("tnk,sn->tsk", right_by_class, 1 - c) / counts


@dataclass(frozen=True)
class FlipStats:
    """Flip statistics of one teacher/student pair on one evaluation set."""

    acc_teacher: float
    acc_student: float
    rho_pos: float
    rho_neg: float

    @property
    def delta_acc(self) -> float:
        return self.acc_teacher - self.acc_student

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "delta_acc": self.delta_acc}


def flip_stats(correct_teacher: torch.Tensor, correct_student: torch.Tensor) -> FlipStats:
    t, s = correct_teacher.bool(), correct_student.bool()
    return FlipStats(t.double().mean().item(), s.double().mean().item(),
                     (t & ~s).double().mean().item(), (s & ~t).double().mean().item())


def knowledge_gain_loss(correct_before: torch.Tensor, correct_after: torch.Tensor) -> tuple[float, float]:
    """(gain, loss): share of all samples wrong→right and right→wrong from before to after transfer."""
    before, after = correct_before.bool(), correct_after.bool()
    return (~before & after).double().mean().item(), (before & ~after).double().mean().item()


def pairwise_class_flip_counts(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``int64 [M, M, K]``: number of class-k samples that model t gets right and model s wrong.
    Works on ``[M, M, N]`` flags (no ``[M, N, K]`` intermediate), so it scales to large label spaces."""
    c = correct.bool()
    flips = c[:, None, :] & ~c[None, :, :]  # [M, M, N]
    counts = torch.zeros(c.shape[0], c.shape[0], num_classes, dtype=torch.int32)
    return counts.index_add_(2, labels.long(), flips.int()).long()
