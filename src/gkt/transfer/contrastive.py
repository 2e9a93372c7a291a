"""Contrastive baselines (paper appendix A.2): CD (eq. 6) and CRD (Tian et al. 2020, eq. 7), each
combined with cross-entropy on labels. Both use the models' pooled penultimate features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gkt.core.errors import GktError
from gkt.models.classifier import Classifier
from gkt.transfer.base import (
    LABELS,
    STUDENT_FEATURES,
    TEACHER_FEATURES,
    Step,
    TransferMethod,
    register_method,
)


def similarity_kl(student_features: torch.Tensor, teacher_features: torch.Tensor, temperature: float = 1.0
                  ) -> torch.Tensor:
    """Eq. 6: row-wise ``KL[σ(S_t) ‖ σ(S_s)]`` between the batch's cosine-similarity matrices, averaged."""
    s, t = F.normalize(student_features, dim=-1), F.normalize(teacher_features, dim=-1)
    log_s = F.log_softmax(s @ s.T / temperature, -1)
    log_t = F.log_softmax(t @ t.T / temperature, -1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


@register_method("cd")
class ContrastiveDistillation(TransferMethod):
    """CD (eq. 6): match the batch's feature-similarity structure, lam·L_CD + (1−lam)·XE."""

    needs = frozenset({STUDENT_FEATURES, TEACHER_FEATURES, LABELS})

    def __init__(self, temperature: float = 1.0, lam: float = 0.5):
        super().__init__(temperature)
        if not 0 <= lam <= 1:
            raise GktError(f"lam must be in [0, 1], got {lam}")
        self.lam = lam

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        cd = similarity_kl(step.student_features, step.targets[TEACHER_FEATURES], self.temperature)
        return {"cd": self.lam * cd, "xe": (1 - self.lam) * F.cross_entropy(step.student_logits, step.labels)}


def nce_loss(anchor: torch.Tensor, memory: torch.Tensor, candidates: torch.Tensor, nce_t: float,
             log_z: torch.Tensor) -> torch.Tensor:
    """CRD's NCE objective (eq. 7) for anchors ``[B, D]`` against ``memory[candidates]`` (column 0 the
    positive, the rest K negatives drawn from N samples): ``−E[log h(pos)] − K·E[log(1 − h(neg))]`` with
    ``h = e^{s}/(e^{s} + K/N)`` and ``s = a·m/τ − log Z``."""
    k, n = candidates.shape[1] - 1, memory.shape[0]
    scores = torch.einsum("bkd,bd->bk", memory[candidates], anchor) / nce_t - log_z
    log_noise = math.log(k / n)
    log_h_pos = scores[:, 0] - torch.logaddexp(scores[:, 0], torch.tensor(log_noise, device=scores.device))
    log_1m_h_neg = log_noise - torch.logaddexp(scores[:, 1:], torch.tensor(log_noise, device=scores.device))
    return -(log_h_pos + log_1m_h_neg.sum(-1)).mean()


@register_method("crd")
class ContrastiveRepresentationDistillation(TransferMethod):
    """CRD (eq. 7): learned projections, negatives from a feature memory; XE + beta·L_CRD."""

    needs = frozenset({STUDENT_FEATURES, TEACHER_FEATURES, LABELS})

    def __init__(self, temperature: float = 1.0, beta: float = 0.8, dim: int = 128, negatives: int = 1024,
                 nce_t: float = 0.07, momentum: float = 0.5):
        super().__init__(temperature)
        if dim < 1 or negatives < 1 or nce_t <= 0 or not 0 <= momentum < 1:
            raise GktError("crd needs dim >= 1, negatives >= 1, nce_t > 0 and 0 <= momentum < 1")
        self.beta, self.dim, self.negatives, self.nce_t, self.momentum = beta, dim, negatives, nce_t, momentum

    def setup(self, student: Classifier, teacher: Classifier, num_samples: int, example: torch.Tensor) -> None:
        """Projection heads sized from one example batch; memories of unit vectors, one row per sample;
        ``log_z`` (CRD's normalising constants, student and teacher side) is fixed on the first batch."""
        if num_samples < 2:
            raise GktError("crd needs a transfer set of at least 2 samples")
        with torch.no_grad():
            d_s, d_t = student.features(example).shape[-1], teacher.features(example).shape[-1]
        self.embed_student, self.embed_teacher = nn.Linear(d_s, self.dim), nn.Linear(d_t, self.dim)
        bound = 1 / math.sqrt(self.dim / 3)
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, F.normalize(torch.rand(num_samples, self.dim) * 2 * bound - bound, dim=-1))
        self.register_buffer("log_z", torch.full((2,), math.nan))

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        v_s = F.normalize(self.embed_student(step.student_features), dim=-1)
        v_t = F.normalize(self.embed_teacher(step.targets[TEACHER_FEATURES]), dim=-1)
        n = self.memory_student.shape[0]
        k = min(self.negatives, n - 1)
        idx = step.indices
        # K negatives per sample, uniform over the other samples (shift past the positive's index).
        negatives = torch.randint(0, n - 1, (len(idx), k), generator=step.generator)
        negatives += (negatives >= idx[:, None]).long()
        candidates = torch.cat([idx[:, None], negatives], 1).to(v_s.device)
        if torch.isnan(self.log_z).any():
            with torch.no_grad():
                for side, (anchor, memory) in enumerate(((v_s, self.memory_teacher), (v_t, self.memory_student))):
                    raw = torch.einsum("bkd,bd->bk", memory[candidates], anchor) / self.nce_t
                    self.log_z[side] = torch.logsumexp(raw.flatten(), 0) - math.log(raw.numel()) + math.log(n)
        loss = (nce_loss(v_s, self.memory_teacher, candidates, self.nce_t, self.log_z[0])
                + nce_loss(v_t, self.memory_student, candidates, self.nce_t, self.log_z[1]))
        with torch.no_grad():
            rows = idx.to(v_s.device)
            for memory, v in ((self.memory_student, v_s), (self.memory_teacher, v_t)):
                memory[rows] = F.normalize(self.momentum * memory[rows] + (1 - self.momentum) * v.detach(), dim=-1)
        return {"crd": self.beta * loss, "xe": F.cross_entropy(step.student_logits, step.labels)}
