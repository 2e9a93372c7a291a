"""Cached outputs of frozen models: the one mechanism for a transfer's teachers and frozen student and
for KDEP's teacher (logits or tapped features).

On a deterministic input pipeline (no augmentation) a frozen model's output for a training sample never
changes, so it is computed once, stored by content — the model's identity (:meth:`Classifier.identity`),
what is taken from it (logits, or a :class:`FeatureTap` layer) and the dataset's identity — and reused
across epochs, methods, runs and studies. Logits go through the prediction store
(:mod:`gkt.engine.predictions`); exact logits and features are stored as one ``[N, D]`` float32 table.
Files are memory-mapped and only the rows of each batch are read, so they scale past RAM.

Small label spaces store full logits (exact targets). Large ones (more than 100 classes) give
:class:`~gkt.engine.sparse_targets.SparseTargets`: the exact top-1 class with its probability, K = 32 classes
drawn from the rest of the distribution at the loss's temperature (an unbiased target: its expectation is
the model's distribution, so the KL's gradient is the full KL's in expectation), the top-k logits and the
true-class and maximum probabilities for KL+DP's masks — 244 bytes per sample in the prediction store
(with k = 10; full float32 logits take 4·C, 4000 bytes for 1000 classes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gkt.core.checked import load_checked, save_checked
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.data.datasets import ImageDataset
from gkt.engine.loop import predict_outputs
from gkt.engine.predictions import FULL_LOGITS_MAX_CLASSES, dataset_identity, get_predictions, store_dir
from gkt.engine.sparse_targets import SparseTargets
from gkt.models.classifier import Classifier
from gkt.models.features import FeatureTap

TABLE_FORMAT = "gkt-outputs/2"  # 2: a checksum of the table in its metadata

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                      "U8": np.uint8, "BOOL": np.bool_}


def mmap_safetensors(path: str | Path) -> dict[str, np.memmap]:
    """Every tensor of a safetensors file as a read-only NumPy memory map (no data is read yet)."""
    path = Path(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    maps = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise GktError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        maps[name] = np.memmap(path, dtype=SAFETENSORS_DTYPES[entry["dtype"]], mode="r", offset=8 + header_len + start,
                               shape=shape) if end > start else np.empty(shape, SAFETENSORS_DTYPES[entry["dtype"]])
    return maps


class CachedOutputs:
    """One frozen model's stored outputs on one dataset; :meth:`rows` gives a batch's targets, :meth:`table`
    all of them. By default the prediction store's logits (sampled sparse targets at ``temperature`` for
    large label spaces); ``exact``: full logits whatever the label space; ``tap``: that layer's pooled
    features."""

    def __init__(self, model: Classifier, dataset: ImageDataset, device: torch.device, *, labels_allowed: bool = False,
                 root: str | Path | None = None, data_id: str | None = None, tap: FeatureTap | None = None,
                 exact: bool = False, temperature: float = 1.0):
        self.num_classes = model.num_classes
        self.labels_allowed = labels_allowed
        self.temperature = temperature
        if tap is None and not exact:
            preds = get_predictions(model, dataset, device, root=root, data_id=data_id, temperature=temperature)
            self.arrays = mmap_safetensors(store_dir(root) / f"{preds.key}.safetensors")
            self.from_store = preds.from_store
            if not self.full_logits:
                log.info("cached targets of %s (%d classes, more than %d): the exact top-1 and %d classes drawn "
                         "from the rest at T=%g (unbiased), %d bytes per sample (full logits: %d) — %s", model.name,
                         model.num_classes, FULL_LOGITS_MAX_CLASSES, self.arrays["sample_indices"].shape[1],
                         temperature, self.bytes_per_sample, 4 * model.num_classes,
                         "read from the store" if self.from_store else "built")
            return
        if tap is not None and tap.model is not model:
            raise GktError(f"the feature tap belongs to {tap.model.name}, not to {model.name}")
        what = f"features:{tap.layer}" if tap is not None else "logits"
        key = stable_hash([TABLE_FORMAT, model.identity(), what, data_id or dataset_identity(dataset)], 24)
        path = store_dir(root) / "tables" / f"{key}.safetensors"
        self.from_store = path.is_file() and _intact(path, len(dataset))
        if not self.from_store:
            if path.is_file():
                log.warning("%s: stored %s of %s fail their checksum (damaged or changed): recomputed", path,
                            what, model.name)
            table = predict_outputs(model, dataset, device, 500, f"{what} of {model.name}", tap)
            save_checked(path, {"outputs": table}, {"format": TABLE_FORMAT, "model": model.name, "outputs": what,
                                                    "dataset": dataset.name})
        self.arrays = mmap_safetensors(path)

    @property
    def full_logits(self) -> bool:
        return "logits" in self.arrays

    @property
    def bytes_per_sample(self) -> int:
        """What one sample takes in the stored file (every stored tensor's row)."""
        return sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in self.arrays.values())

    def rows(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor | SparseTargets:
        """Targets for the dataset positions ``indices``: logits or features ``[B, ...]``, or the sampled
        sparse targets of a large label space (the true-class probability only where labels are allowed)."""
        order = indices.numpy()
        for name in ("outputs", "logits"):
            if name in self.arrays:
                return torch.from_numpy(np.ascontiguousarray(self.arrays[name][order])).to(device, non_blocking=True)
        get = {k: torch.from_numpy(np.ascontiguousarray(self.arrays[k][order])) for k in
               ("predicted", "max_prob", "head_prob", "sample_indices", "sample_counts", "topk_logits",
                "topk_indices", "true_prob")}
        return SparseTargets(get["predicted"].long(), get["max_prob"], get["head_prob"],
                             get["sample_indices"].long(), get["sample_counts"].float(), get["topk_logits"].float(),
                             get["topk_indices"].long(), get["true_prob"] if self.labels_allowed else None,
                             self.num_classes, self.temperature).to(device, non_blocking=True)

    def table(self) -> torch.Tensor:
        """Every row, in dataset order (a stored table or full logits)."""
        name = "outputs" if "outputs" in self.arrays else "logits"
        return torch.from_numpy(np.array(self.arrays[name]))


def _intact(path: Path, rows: int) -> bool:
    """Whether a stored output table is readable, has ``rows`` rows and matches its recorded checksum."""
    stored = load_checked(path)
    return stored is not None and len(stored[0]["outputs"]) == rows


class FrozenOutputs:
    """A frozen model's outputs for a training batch: the rows of its :class:`CachedOutputs` where the input
    pipeline is deterministic, else ``fn`` on the batch (no gradients either way). For KDEP's teacher: its
    features, or its exact logits (``exact=True``), never sparse targets."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], cached: CachedOutputs | None):
        self.fn, self.cached = fn, cached

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.cached.rows(indices, x.device) if self.cached is not None else self.fn(x)
