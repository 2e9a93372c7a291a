"""Small statistics helpers of the analysis (ranks, correlations, summaries)."""

from __future__ import annotations

import math

import torch
from scipy import stats


def _nanmean(x: torch.Tensor) -> float:
    return x[~x.isnan()].double().mean().item() if (~x.isnan()).any() else float("nan")


def _describe(x: torch.Tensor) -> dict[str, float]:
    x = x[~x.isnan()].double()
    if not len(x):
        return {"n": 0}
    return {"n": len(x), "mean": x.mean().item(), "std": x.std().item() if len(x) > 1 else 0.0,
            "median": x.median().item(), "min": x.min().item(), "max": x.max().item()}


def _nan_to_none(values: list) -> list:
    return [_nan_to_none(v) if isinstance(v, list) else (None if math.isnan(v) else v) for v in values]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (``scipy.stats.spearmanr``; ties share their mean rank;
    pairs with a NaN are dropped); NaN with fewer than 3 pairs or a constant side (no ranking to correlate)."""
    keep = ~(a.isnan() | b.isnan())
    x, y = a[keep].double().numpy(), b[keep].double().numpy()
    if len(x) <= 2 or x.min() == x.max() or y.min() == y.max():
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def _entropy_trend(entropy: torch.Tensor, delta_acc: torch.Tensor, rho_pos: torch.Tensor) -> dict[str, float]:
    """Entropy over ordered pairs split by teacher strength, its rank correlation with Δacc and ρ_pos, and
    the mean over students of the within-student correlation with Δacc (the student's level held fixed)."""
    mask = ~torch.eye(len(entropy), dtype=torch.bool)
    ent, dacc = entropy[mask], delta_acc[mask]
    within = torch.tensor([spearman(entropy[mask[:, s], s], delta_acc[mask[:, s], s]) for s in range(len(entropy))],
                          dtype=torch.float64)
    return {"mean": _nanmean(ent), "weaker_teachers_mean": _nanmean(ent[dacc < 0]),
            "stronger_teachers_mean": _nanmean(ent[dacc > 0]), "spearman_vs_delta_acc": spearman(ent, dacc),
            "spearman_vs_rho_pos": spearman(ent, rho_pos[mask]),
            "within_student_spearman_vs_delta_acc": _nanmean(within)}


def _prefix_similarity(rank: torch.Tensor, size: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """Mean pairwise similarity among the ``size[t, s]`` top-ranked classes of each pair, without a
    ``[M, M, K, K]`` intermediate."""
    member = (rank < size[..., None]).double()  # [M, M, K]
    total = ((member @ sim) * member).sum(-1) - (member * sim.diagonal()).sum(-1)
    return total / (size * (size - 1)).double()
