"""The prediction store: each model runs once over a dataset and its outputs are kept on disk.

A stored file is keyed by the model's weights hash, its architecture and preprocessing, and the
dataset's identity (name, labels, image contents), so analysing N models costs N forward passes
(not one per pair) and a later call costs none. Small label spaces keep full float32 logits; large
ones (more than :data:`FULL_LOGITS_MAX_CLASSES` classes) keep the top-k logits and indices plus the
true-class and maximum softmax probabilities. Files are safetensors, written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash, tensor_hash
from gkt.core.io import atomic_path, cache_home
from gkt.data.datasets import FolderImageDataset, ImageDataset, TensorImageDataset, iterate_batches
from gkt.models.checkpoint import weights_hash
from gkt.models.classifier import Classifier

log = logging.getLogger(__name__)


FORMAT = "gkt-predictions/1"


FULL_LOGITS_MAX_CLASSES = 100


DEFAULT_TOPK = 10


@dataclass(frozen=True)
class Predictions:
    """One model's outputs on one dataset, in dataset order."""

    model_name: str
    labels: torch.Tensor  # long [N]
    predicted: torch.Tensor  # long [N]: argmax class
    true_prob: torch.Tensor  # float32 [N]: softmax probability of the true class
    max_prob: torch.Tensor  # float32 [N]: maximum softmax probability (confidence)
    num_classes: int
    logits: torch.Tensor | None = None  # float32 [N, C] for small label spaces
    topk_logits: torch.Tensor | None = None  # float16 [N, k] for large label spaces
    topk_indices: torch.Tensor | None = None  # long [N, k]
    key: str = ""
    from_store: bool = False  # read from the store rather than computed by this call

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def correct(self) -> torch.Tensor:
        """``bool [N]``: the model's argmax equals the label."""
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        return self.correct.double().mean().item() if len(self) else float("nan")

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor, model_name: str = "model",
                    topk: int | None = None, key: str = "") -> Predictions:
        """Summarise ``logits [N, C]``: full logits, or the top-``topk`` when ``topk`` is given."""
        return cls._from_tensors(_summarise(logits, labels.long(), topk), model_name, logits.shape[-1], key)

    @classmethod
    def _from_tensors(cls, t: dict[str, torch.Tensor], model_name: str, num_classes: int, key: str) -> Predictions:
        return cls(model_name, t["labels"].long(), t["predicted"].long(), t["true_prob"].float(),
                   t["max_prob"].float(), num_classes, t.get("logits"), t.get("topk_logits"),
                   None if "topk_indices" not in t else t["topk_indices"].long(), key)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as they are stored (indices as int32 to halve the file)."""
        out = {"labels": self.labels, "predicted": self.predicted.int(), "true_prob": self.true_prob,
               "max_prob": self.max_prob}
        if self.logits is not None:
            out["logits"] = self.logits
        if self.topk_logits is not None and self.topk_indices is not None:
            out["topk_logits"], out["topk_indices"] = self.topk_logits, self.topk_indices.int()
        return {k: v.contiguous() for k, v in out.items()}


def _summarise(logits: torch.Tensor, labels: torch.Tensor, topk: int | None) -> dict[str, torch.Tensor]:
    logits = logits.float()
    probs = logits.softmax(-1)
    out = {"labels": labels, "predicted": logits.argmax(-1), "max_prob": probs.amax(-1),
           "true_prob": probs.gather(-1, labels[:, None]).squeeze(-1)}
    if topk is None:
        out["logits"] = logits
    else:
        values, indices = logits.topk(min(topk, logits.shape[-1]), dim=-1)
        out["topk_logits"], out["topk_indices"] = values.half(), indices
    return out


def _tensor_images_hash(dataset: TensorImageDataset) -> str:
    return hashlib.sha256(dataset.images.contiguous().numpy().tobytes()).hexdigest()


def _folder_files_hash(dataset: FolderImageDataset) -> str:
    return stable_hash([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in dataset.files], 64)


# How the contents of each dataset type enter its identity (the fingerprint covers names and labels).
CONTENT_HASHERS: dict[type, Callable] = {TensorImageDataset: _tensor_images_hash,
                                         FolderImageDataset: _folder_files_hash}


def dataset_identity(dataset: ImageDataset) -> str:
    """Fingerprint (name, shape, classes, labels) plus a hash of the images or files themselves."""
    hasher = next((h for t, h in CONTENT_HASHERS.items() if isinstance(dataset, t)), None)
    return stable_hash([dataset.fingerprint(), hasher(dataset) if hasher else None])


def prediction_key(model: Classifier, dataset: ImageDataset | str, topk: int | None = None) -> str:
    """Cache key: weights hash, architecture, preprocessing, dataset identity and storage layout."""
    data_id = dataset if isinstance(dataset, str) else dataset_identity(dataset)
    return stable_hash([FORMAT, weights_hash(model), model.arch.to_dict(), model.preprocess.to_dict(), data_id,
                        topk], 24)


def store_dir(root: str | Path | None = None) -> Path:
    """Where predictions live: ``root`` or ``$GKT_HOME/predictions``."""
    return Path(root) if root else cache_home() / "predictions"


def storage_topk(num_classes: int, topk: int = DEFAULT_TOPK) -> int | None:
    """``None`` (keep full logits) for small label spaces, else the number of top classes kept."""
    return None if num_classes <= FULL_LOGITS_MAX_CLASSES else topk


def save_predictions(preds: Predictions, path: Path, dataset_name: str) -> None:
    """Write ``preds`` atomically with a SHA-256 of its tensors (checked by :func:`load_predictions`)."""
    tensors = preds.tensors()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "model": preds.model_name, "dataset": dataset_name,
                                               "num_classes": str(preds.num_classes), "key": preds.key,
                                               "sha256": tensor_hash(tensors, 64)})


def load_predictions(path: Path, model_name: str | None = None) -> Predictions:
    """Read a stored predictions file; a missing or corrupt one is a :class:`GktError`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise GktError(f"{path}: cannot read stored predictions ({exc})") from exc
    if meta.get("format") != FORMAT or not {"labels", "predicted", "true_prob", "max_prob"} <= set(tensors):
        raise GktError(f"{path}: not a {FORMAT} file")
    if tensor_hash(tensors, 64) != meta.get("sha256"):
        raise GktError(f"{path}: stored predictions fail their checksum (corrupt or changed)")
    return Predictions._from_tensors(tensors, model_name or meta.get("model", path.stem),
                                     int(meta["num_classes"]), meta.get("key", path.stem))


@torch.no_grad()
def compute_predictions(model: Classifier, dataset: ImageDataset, device: torch.device, batch_size: int = 500,
                        topk: int | None = None, key: str = "") -> Predictions:
    """One batched, no-grad forward pass of ``model`` over ``dataset`` (eval mode, progress bar)."""
    was_training = model.training
    model.to(device).eval()
    parts = []
    batches = iterate_batches(dataset, batch_size)
    for images, labels, _ in tqdm(batches, total=math.ceil(len(dataset) / batch_size), desc=f"predict {model.name}",
                                  leave=False, disable=None):
        parts.append(_summarise(model(images.to(device, non_blocking=True)).cpu(), labels, topk))
    model.train(was_training)
    if not parts:
        raise GktError(f"{dataset.name} is empty: nothing to predict")
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return Predictions._from_tensors(merged, model.name, model.num_classes, key)


def get_predictions(model: Classifier, dataset: ImageDataset, device: torch.device, *, batch_size: int = 500,
                    topk: int = DEFAULT_TOPK, root: str | Path | None = None, refresh: bool = False,
                    data_id: str | None = None) -> Predictions:
    """Stored predictions of ``model`` on ``dataset``, computing and storing them when missing
    (or when ``refresh``). A corrupt or mismatching stored file is recomputed with a warning."""
    keep = storage_topk(model.num_classes, topk)
    key = prediction_key(model, data_id or dataset, keep)
    path = store_dir(root) / f"{key}.safetensors"
    if path.is_file() and not refresh:
        try:
            stored = load_predictions(path, model.name)
            if torch.equal(stored.labels, dataset.labels) and stored.num_classes == model.num_classes:
                log.debug("predictions of %s on %s: stored (%s)", model.name, dataset.name, path)
                return replace(stored, from_store=True)
            log.warning("%s: stored labels do not match %s; recomputing", path, dataset.name)
        except GktError as exc:
            log.warning("%s; recomputing", exc)
    start = time.perf_counter()
    preds = compute_predictions(model, dataset, device, batch_size, keep, key)
    save_predictions(preds, path, dataset.name)
    log.info("predicted %s on %s (%d samples) in %.1fs", model.name, dataset.name, len(dataset),
             time.perf_counter() - start)
    return preds


def get_many(models: Sequence[Classifier], dataset: ImageDataset, device: torch.device, *, batch_size: int = 500,
             topk: int = DEFAULT_TOPK, root: str | Path | None = None, refresh: bool = False) -> list[Predictions]:
    """:func:`get_predictions` for several models over one dataset (hashing the dataset once)."""
    data_id = dataset_identity(dataset)
    return [get_predictions(m, dataset, device, batch_size=batch_size, topk=topk, root=root, refresh=refresh,
                            data_id=data_id) for m in models]
