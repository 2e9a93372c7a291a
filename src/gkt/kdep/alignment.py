"""SVD alignment of teacher features to a student's width (KDEP, He et al. 2022)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gkt.core.checked import load_checked, save_checked
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import cache_home
from gkt.data.datasets import ImageDataset, iterate_batches
from gkt.engine.predictions import dataset_identity
from gkt.models.features import FeatureTap

log = logging.getLogger(__name__)


ALIGNMENT_VERSION = 2  # 2: a checksum in the metadata


def power_temperature_scaling(t: torch.Tensor, temperature: float = 0.1, power: float = 3.0) -> torch.Tensor:
    """PTS: ``sign(t) · |t / T|^(1/n)`` (KDEP's target normalisation; T = 0.1, n = 3)."""
    return torch.sign(t) * (t / temperature).abs().pow(1.0 / power)


def _canonical_signs(v: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-magnitude entry is positive (SVD signs are arbitrary)."""
    idx = v.abs().argmax(0)
    signs = torch.sign(v[idx, torch.arange(v.shape[1])])
    return v * torch.where(signs == 0, torch.ones_like(signs), signs)


RANK_TOLERANCE = 1e-6  # singular values below this share of the largest count as zero


@dataclass(frozen=True)
class SvdAlignment:
    """Mean ``[d_t]``, principal directions ``[d_t, r]`` (columns by decreasing singular value) and
    singular values ``[r]`` of the teacher's features; ``r`` = numerical rank."""

    mean: torch.Tensor
    components: torch.Tensor
    singular_values: torch.Tensor
    count: int

    @classmethod
    def from_decomposition(cls, mean: torch.Tensor, s: torch.Tensor, v: torch.Tensor, count: int) -> SvdAlignment:
        order = torch.argsort(s, descending=True)
        s, v = s[order], v[:, order]
        rank = int((s > RANK_TOLERANCE * s[0]).sum()) if len(s) and s[0] > 0 else 0
        return cls(mean.float(), _canonical_signs(v[:, :rank]).float(), s[:rank].float(), count)

    @property
    def teacher_dim(self) -> int:
        return int(self.mean.shape[0])

    def projection(self, student_dim: int) -> torch.Tensor:
        """``P [d_t, d_s]`` = the top ``d_s`` directions, zero columns beyond the rank (``d_s > d_t``)."""
        k = min(student_dim, self.components.shape[1])
        return F.pad(self.components[:, :k], (0, student_dim - k))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.contiguous(), "components": self.components.contiguous(),
                "singular_values": self.singular_values.contiguous()}

    def save(self, path: Path) -> None:
        save_checked(path, self.tensors(), {"count": str(self.count)})

    @classmethod
    def load(cls, path: Path) -> SvdAlignment | None:
        """The stored alignment, or ``None`` when the file is damaged (unreadable, or fails its checksum)."""
        stored = load_checked(path)
        if stored is None or not {"mean", "components", "singular_values"} <= set(stored[0]):
            return None
        t, meta = stored
        return cls(t["mean"], t["components"], t["singular_values"], int(meta.get("count", 0)))


def svd_alignment_direct(features: torch.Tensor) -> SvdAlignment:
    """Reference: ``U, S, V = svd(X − μ)`` on the stacked features ``X [N, d_t]`` (float64)."""
    x = features.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return SvdAlignment.from_decomposition(mean, s, vh.T, len(x))


class StreamingMoments:
    """Streaming mean and centred scatter ``Σ (x − μ)(x − μ)ᵀ`` in float64, merged batch by batch with
    Chan et al.'s parallel update (no loss of precision from subtracting ``N μ μᵀ`` at the end).
    Memory is ``O(d²)`` whatever ``N``; its eigenvectors are the right singular vectors of ``X − μ``."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, batch: torch.Tensor) -> None:
        x = batch.detach().to("cpu", torch.float64)
        n = len(x)
        if n == 0:
            return
        batch_mean = x.mean(0)
        centred = x - batch_mean
        delta = batch_mean - self.mean
        total = self.count + n
        self.scatter += centred.T @ centred + torch.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def alignment(self) -> SvdAlignment:
        if self.count < 2:
            raise GktError("the SVD alignment needs at least 2 samples")
        eigenvalues, eigenvectors = torch.linalg.eigh(self.scatter)
        return SvdAlignment.from_decomposition(self.mean, eigenvalues.clamp_min(0).sqrt(), eigenvectors, self.count)


@torch.no_grad()
def fit_alignment(tap: FeatureTap, dataset: ImageDataset, device: torch.device, batch_size: int = 500,
                  cache: bool = True, features: torch.Tensor | None = None) -> SvdAlignment:
    """:class:`StreamingMoments` over one eval pass of the teacher on ``dataset`` (or over its already
    computed ``features``, in chunks); cached on disk by the teacher's identity + feature layer + the
    data's identity (``$GKT_HOME/kdep``)."""
    key = stable_hash([ALIGNMENT_VERSION, tap.model.identity(), tap.layer, dataset_identity(dataset)])
    path = cache_home() / "kdep" / f"alignment-{key}.safetensors"
    if cache and path.is_file():
        stored = SvdAlignment.load(path)
        if stored is not None:
            log.info("SVD alignment from cache %s", path)
            return stored
        log.warning("%s: the cached SVD alignment is damaged (unreadable or fails its checksum): recomputed", path)
    moments = StreamingMoments(tap.dim)
    if features is not None:
        for chunk in features.split(batch_size):
            moments.update(chunk)
    else:
        tap.model.to(device).eval()
        for images, _, _ in tqdm(iterate_batches(dataset, batch_size), total=math.ceil(len(dataset) / batch_size),
                                 desc="SVD alignment", leave=False, disable=None):
            moments.update(tap(images.to(device)))
    alignment = moments.alignment()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        alignment.save(path)
    return alignment
