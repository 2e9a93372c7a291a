"""Sampled sparse soft targets for large label spaces (Sparse Logit Sampling: Anshumann et al., ACL 2025,
"Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs").

Keeping a frozen model's top-k probabilities and spreading the rest evenly gives a *biased* target: the
student is pulled towards a distribution the model does not have. Here each sample keeps its top-1 class
and probability exactly and ``K`` classes drawn with replacement from the rest of the model's distribution
at the temperature ``T`` of the loss (the top-1 class removed, renormalised), stored as distinct indices and
their counts. The target

    q = p_T(top1)·onehot(top1) + (1 − p_T(top1))·counts/K

has ``E[q] = p_T`` exactly, so the KL's gradient w.r.t. the student's logits, ``T·(σ(z_s/T) − q)``, is the
full KL's in expectation (tested). The top-1 class, the maximum and the true-class probabilities (at T = 1,
what KL+DP's masks compare) are stored exactly.

Draws are deterministic: the uniforms of draw ``j`` of row ``i`` are a hash (SplitMix64) of ``(seed, i,
j)``, so a stored summary is a function of the model, the data and the row, like every cached output.
Storage per sample: ``K`` class indices (int32) and counts (uint8) plus the top-1 probability at ``T``
(float32): ``5·K + 4`` bytes beside the prediction store's summary (see :func:`sampled_bytes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_DRAWS = 32  # K: classes drawn per sample (with replacement) besides the exact top-1
SAMPLING_SEED = 0  # the prediction store's draws; tests vary it

_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on ``uint64`` arrays (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def row_uniforms(rows: torch.Tensor, draws: int, seed: int = SAMPLING_SEED) -> torch.Tensor:
    """``float64 [B, draws]`` in [0, 1): the uniforms of each row, a function of ``(seed, row, draw)`` only
    (the same whatever batch the row is in)."""
    key = _splitmix64(np.array([seed], dtype=np.uint64))
    counter = rows.cpu().numpy().astype(np.uint64)[:, None] * np.uint64(draws) + np.arange(draws, dtype=np.uint64)
    bits = _splitmix64(counter + key) >> np.uint64(11)
    return torch.from_numpy(bits.astype(np.float64) * 2.0 ** -53)


def sample_targets(logits: torch.Tensor, rows: torch.Tensor, draws: int = DEFAULT_DRAWS, temperature: float = 1.0,
                   seed: int = SAMPLING_SEED) -> dict[str, torch.Tensor]:
    """The sampled part of a sparse summary of ``logits [B, C]`` (rows ``rows`` of their dataset):
    ``head_prob`` (float32 [B], p_T of the argmax class), ``sample_indices`` (int32 [B, K]: the distinct
    drawn classes, padded with the argmax) and ``sample_counts`` (uint8 [B, K]: how often each was drawn, 0
    for padding). Computed in float64 on the CPU."""
    if not 1 <= draws <= 255:
        raise ValueError(f"draws must be in [1, 255] (counts are stored as uint8), got {draws}")
    p = torch.softmax(logits.detach().double().cpu() / temperature, -1)
    top1 = p.argmax(-1, keepdim=True)
    head = p.gather(-1, top1)
    tail = p.scatter(-1, top1, 0.0)
    empty = tail.sum(-1, keepdim=True) <= 0  # all mass on the top-1 class: any draw, weight 0
    tail = torch.where(empty, torch.ones_like(tail).scatter_(-1, top1, 0.0), tail)
    cdf = tail.cumsum(-1)
    cdf = cdf / cdf[:, -1:]  # the last entry exactly 1: a uniform below it never falls past the last class
    drawn = torch.searchsorted(cdf, row_uniforms(rows, draws, seed), right=True).clamp_max(p.shape[-1] - 1)
    drawn = drawn.sort(-1).values
    starts = torch.ones_like(drawn, dtype=torch.bool)
    starts[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    run = starts.long().cumsum(-1) - 1  # which distinct class each draw is
    counts = torch.zeros_like(drawn).scatter_add_(-1, run, torch.ones_like(drawn))
    indices = top1.expand_as(drawn).clone().scatter_(-1, run, drawn)
    return {"head_prob": head.squeeze(-1).float(), "sample_indices": indices.int(),
            "sample_counts": counts.to(torch.uint8)}


def sampled_bytes(draws: int = DEFAULT_DRAWS) -> int:
    """Bytes per sample the draws add to a stored summary: indices (int32) and counts (uint8) of ``draws``
    classes and the top-1 probability at the loss's temperature (float32)."""
    return 5 * draws + 4


@dataclass(frozen=True)
class SparseTargets:
    """A batch of sampled sparse targets (see the module docstring), as a frozen model's cached outputs
    for a large label space. Tensor fields share leading batch dimensions (``[B]``, or ``[B, M]`` for M
    stacked models); the methods read it through :mod:`gkt.transfer.base`'s helpers."""

    predicted: torch.Tensor  # long [...]: the argmax class (exact)
    max_prob: torch.Tensor  # float [...]: its probability at T = 1 (exact)
    head_prob: torch.Tensor  # float [...]: its probability at the sampling temperature (exact)
    sample_indices: torch.Tensor  # long [..., K]
    sample_counts: torch.Tensor  # float [..., K]
    topk_logits: torch.Tensor  # float [..., k]: the top-k logits (as stored, fp16 precision)
    topk_indices: torch.Tensor  # long [..., k]
    true_prob: torch.Tensor | None  # float [...]: the true class's probability at T = 1; None without labels
    num_classes: int
    temperature: float  # the temperature the draws were made at

    @property
    def draws(self) -> int:
        return self.sample_indices.shape[-1]

    def target(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices [..., 1+K], probs [..., 1+K])``: the sparse target q at the sampling temperature."""
        indices = torch.cat([self.predicted[..., None], self.sample_indices], -1)
        tail = (1 - self.head_prob)[..., None] * self.sample_counts / self.draws
        return indices, torch.cat([self.head_prob[..., None], tail], -1)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> SparseTargets:
        """``fn`` on every tensor field (indexing, device moves, adding a dimension)."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def __getitem__(self, rows: torch.Tensor) -> SparseTargets:
        return self.apply(lambda t: t[rows])

    def __len__(self) -> int:
        return len(self.predicted)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseTargets:
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))

    def cpu(self) -> SparseTargets:
        return self.to("cpu")

    def numel(self) -> int:
        """Stored elements (what preparing the whole transfer set at once holds)."""
        return sum(getattr(self, f.name).numel() for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor))

    def argmax(self, dim: int = -1) -> torch.Tensor:
        """The argmax class (as ``logits.argmax(-1)`` of the full logits)."""
        if dim != -1:
            raise ValueError("sparse targets have an argmax over classes only (dim=-1)")
        return self.predicted

    @staticmethod
    def combine(fn: Callable[[Sequence[torch.Tensor]], torch.Tensor], parts: Sequence[SparseTargets]) -> SparseTargets:
        """``fn`` (e.g. ``torch.stack(·, 1)``) over the parts' fields, which must come from one setting."""
        first = parts[0]
        if any(p.temperature != first.temperature or p.num_classes != first.num_classes
               or (p.true_prob is None) != (first.true_prob is None) for p in parts):
            raise ValueError("sparse targets of different temperatures, label spaces or labels cannot be combined")
        return dataclasses.replace(first, **{f.name: fn([getattr(p, f.name) for p in parts])
                                             for f in dataclasses.fields(first)
                                             if isinstance(getattr(first, f.name), torch.Tensor)})

    @staticmethod
    def where(mask: torch.Tensor, a: SparseTargets, b: SparseTargets) -> SparseTargets:
        """Row-wise ``a`` where ``mask [B]`` else ``b``."""
        def pick(ts: Sequence[torch.Tensor]) -> torch.Tensor:
            return torch.where(mask.view(-1, *[1] * (ts[0].dim() - 1)), ts[0], ts[1])

        return SparseTargets.combine(pick, [a, b])

    def pick(self, source: torch.Tensor) -> SparseTargets:
        """From stacked targets ``[B, M, ...]``, row ``b`` of model ``source[b]``: ``[B, ...]``."""
        rows = torch.arange(len(source), device=source.device)
        return self.apply(lambda t: t[rows, source])


def stack_targets(parts: Sequence[torch.Tensor | SparseTargets], dim: int = 1) -> torch.Tensor | SparseTargets:
    """Several models' outputs for one batch stacked along ``dim`` (logits, or sparse targets field by field)."""
    if all(isinstance(p, SparseTargets) for p in parts):
        return SparseTargets.combine(lambda ts: torch.stack(list(ts), dim), parts)
    if any(isinstance(p, SparseTargets) for p in parts):
        raise ValueError("cannot stack cached sparse targets with logits")
    return torch.stack(list(parts), dim)
