"""The prediction store: each model runs once over a dataset and its outputs are kept on disk.

A stored file is keyed by the model's weights hash, its architecture and preprocessing, and the
dataset's identity (name, labels, image contents), so analysing N models costs N forward passes
(not one per pair) and a later call costs none. Small label spaces keep full float32 logits; large
ones (more than :data:`FULL_LOGITS_MAX_CLASSES` classes) keep the top-k logits and indices, the
true-class and maximum softmax probabilities, and sampled sparse targets (:mod:`gkt.engine.sparse_targets`:
the top-1 probability at the loss's temperature and K classes drawn from the rest, with their counts) —
``8 + 4 + 4 + 4 + 6·k + 5·K + 4`` bytes per sample (244 with k = 10, K = 32; full logits take ``4·C``).
Files are safetensors, written atomically.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash, tensor_hash
from gkt.core.io import atomic_path, cache_home
from gkt.core.runtime import autocast, autocast_dtype
from gkt.data.datasets import ImageDataset, iterate_batches
from gkt.engine.sparse_targets import DEFAULT_DRAWS, sample_targets
from gkt.models.classifier import Classifier
from gkt.models.preprocess import Preprocess

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
    head_prob: torch.Tensor | None = None  # float32 [N]: the top-1 probability at the sampling temperature
    sample_indices: torch.Tensor | None = None  # long [N, K]: classes drawn from the rest (distinct, padded)
    sample_counts: torch.Tensor | None = None  # uint8 [N, K]: how often each was drawn
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
                    topk: int | None = None, key: str = "", temperature: float = 1.0) -> Predictions:
        """Summarise ``logits [N, C]``: full logits, or the top-``topk`` and sampled sparse targets at
        ``temperature`` when ``topk`` is given."""
        return cls._from_tensors(_summarise(logits, labels.long(), topk, torch.arange(len(logits)), temperature),
                                 model_name, logits.shape[-1], key)

    @classmethod
    def _from_tensors(cls, t: dict[str, torch.Tensor], model_name: str, num_classes: int, key: str) -> Predictions:
        return cls(model_name, t["labels"].long(), t["predicted"].long(), t["true_prob"].float(),
                   t["max_prob"].float(), num_classes, t.get("logits"), t.get("topk_logits"),
                   None if "topk_indices" not in t else t["topk_indices"].long(), t.get("head_prob"),
                   None if "sample_indices" not in t else t["sample_indices"].long(), t.get("sample_counts"), key)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as they are stored (indices as int32 to halve the file)."""
        out = {"labels": self.labels, "predicted": self.predicted.int(), "true_prob": self.true_prob,
               "max_prob": self.max_prob}
        if self.logits is not None:
            out["logits"] = self.logits
        if self.topk_logits is not None and self.topk_indices is not None:
            out["topk_logits"], out["topk_indices"] = self.topk_logits, self.topk_indices.int()
        if self.sample_indices is not None:
            out |= {"head_prob": self.head_prob, "sample_indices": self.sample_indices.int(),
                    "sample_counts": self.sample_counts}
        return {k: v.contiguous() for k, v in out.items()}


def _summarise(logits: torch.Tensor, labels: torch.Tensor, topk: int | None, rows: torch.Tensor,
               temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """The stored tensors of a batch of ``logits`` (rows ``rows`` of the predicted dataset)."""
    logits = logits.float()
    probs = logits.softmax(-1)
    out = {"labels": labels, "predicted": logits.argmax(-1), "max_prob": probs.amax(-1),
           "true_prob": probs.gather(-1, labels[:, None]).squeeze(-1)}
    if topk is None:
        out["logits"] = logits
    else:
        values, indices = logits.topk(min(topk, logits.shape[-1]), dim=-1)
        out["topk_logits"], out["topk_indices"] = values.half(), indices
        out |= sample_targets(logits, rows, DEFAULT_DRAWS, temperature)
    return out


def dataset_identity(dataset: ImageDataset) -> str:
    """Fingerprint (name, shape, classes, labels) plus a hash of the images or files themselves."""
    return stable_hash([dataset.fingerprint(), dataset.content_id()])


def seen_identities(models: Sequence[Classifier], dataset: ImageDataset, data_id: str) -> list[str]:
    """The identity of what each model sees of ``dataset`` (whose identity is ``data_id``): where a decode
    plan of several views holds the model's own view, the dataset decoded into that view alone (the model's
    outputs are the same whatever other views the plan holds); else the dataset itself. Each distinct view
    is hashed once."""
    plan, ids = dataset.decode_plan, {}
    for view in dict.fromkeys(m.preprocess.view for m in models):
        ids[view] = dataset_identity(dataset.at_decode_plan((view,))) if len(plan) > 1 and view in plan else data_id
    return [ids[m.preprocess.view] for m in models]


def prediction_key(model: Classifier, dataset: ImageDataset | str, topk: int | None = None, *variant: str) -> str:
    """Cache key: the model's identity (weights, architecture, preprocessing, classes), the dataset's
    identity, the storage layout (and any ``variant`` of how the outputs were computed, e.g. a reduced
    precision)."""
    data_id = dataset if isinstance(dataset, str) else dataset_identity(dataset)
    return stable_hash([FORMAT, model.identity(), data_id, topk, *variant], 24)


def store_dir(root: str | Path | None = None) -> Path:
    """Where predictions live: ``root`` or ``$GKT_HOME/predictions``."""
    return Path(root) if root else cache_home() / "predictions"


def storage_topk(num_classes: int, topk: int = DEFAULT_TOPK) -> int | None:
    """``None`` (keep full logits) for small label spaces, else the number of top classes kept."""
    return None if num_classes <= FULL_LOGITS_MAX_CLASSES else topk


def sampling_variant(topk: int | None, temperature: float) -> list[str]:
    """What a summary's sampled targets add to its key: the draws and their temperature (nothing for full
    logits)."""
    return [] if topk is None else [f"draws{DEFAULT_DRAWS}", f"T{temperature!r}"]


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
    if meta.get("key", path.stem) != path.stem:
        raise GktError(f"{path}: holds the predictions stored under key {meta.get('key')}, not {path.stem} (a file "
                       "copied or renamed in the store)")
    return Predictions._from_tensors(tensors, model_name or meta.get("model", path.stem),
                                     int(meta["num_classes"]), meta.get("key", path.stem))


@torch.no_grad()
def predict_many(models: Sequence[Classifier], dataset: ImageDataset, device: torch.device, batch_size: int = 500,
                 topks: Sequence[int | None] | None = None, keys: Sequence[str] | None = None, *,
                 precision: str = "fp32", workers: int | None = None,
                 rows: Sequence[torch.Tensor | None] | None = None, temperature: float = 1.0) -> list[Predictions | None]:
    """One batched, no-grad pass over ``dataset`` running every model of ``models`` on each batch (each
    image is decoded once for all of them, and resized and normalised once for all models with the same
    preprocessing, e.g. a model and its random-init baseline), eval mode, autocast in ``precision``.
    ``rows``: per model, the dataset rows it runs on (``None``: all); a model whose rows were all
    unreadable comes back ``None``. Unreadable images skipped under ``--bad-images skip`` are dropped from
    ``dataset`` at the end (predictions cover the rest). Summaries of large label spaces draw their sampled
    targets at ``temperature``, seeded by each sample's position among the rows predicted."""
    if not models:
        return []
    topks = list(topks) if topks is not None else [None] * len(models)
    masks = [None if r is None else torch.zeros(len(dataset), dtype=torch.bool).index_fill_(0, r, True)
             for r in (rows if rows is not None else [None] * len(models))]
    positions = [None if m is None else m.long().cumsum(0) - 1 for m in masks]  # dataset row → predicted row
    modes = [m.training for m in models]
    for model in models:
        model.to(device).eval()
    parts: list[list[dict[str, torch.Tensor]]] = [[] for _ in models]
    plan = dataset.decode_plan
    groups: dict[Preprocess, list[int]] = {}  # models with the same preprocessing share its input batch
    for i, model in enumerate(models):
        groups.setdefault(model.preprocess, []).append(i)
    names = ", ".join(m.name for m in models)
    batches = iterate_batches(dataset, batch_size, workers=workers, pin_memory=device.type == "cuda")
    for images, labels, idx in tqdm(batches, total=math.ceil(len(dataset) / batch_size), leave=False,
                                    disable=None, desc=f"predict {names if len(names) < 40 else f'{len(models)} models'}"):
        x = images.to(device, non_blocking=True)
        with autocast(device, precision):
            for members in groups.values():
                prepared = None
                for i in members:
                    chosen = None if masks[i] is None else masks[i][idx]
                    if chosen is not None and not chosen.any():
                        continue
                    if prepared is None:
                        prepared = models[members[0]].input_of(x, plan)
                    if chosen is None or chosen.all():
                        logits, seen, seen_idx = models[i](x, prepared), labels, idx
                    else:
                        on_device = chosen.to(device)
                        logits = models[i](x[on_device], prepared[on_device])
                        seen, seen_idx = labels[chosen], idx[chosen]
                    at = seen_idx if positions[i] is None else positions[i][seen_idx]
                    parts[i].append(_summarise(logits.float().cpu(), seen, topks[i], at, temperature))
    for model, mode in zip(models, modes):
        model.train(mode)
    if not any(parts):
        raise GktError(f"{dataset.name} is empty: nothing to predict")
    return [Predictions._from_tensors({k: torch.cat([p[k] for p in part]) for k in part[0]}, model.name,
                                      model.num_classes, key) if part else None
            for model, part, key in zip(models, parts, keys or [""] * len(models))]


def compute_predictions(model: Classifier, dataset: ImageDataset, device: torch.device, batch_size: int = 500,
                        topk: int | None = None, key: str = "", precision: str = "fp32") -> Predictions:
    """:func:`predict_many` for one model."""
    return predict_many([model], dataset, device, batch_size, [topk], [key], precision=precision)[0]


def _stored(path: Path, model: Classifier, dataset: ImageDataset) -> Predictions | None:
    """The stored predictions at ``path`` if they are valid for ``model`` on ``dataset``."""
    if not path.is_file():
        return None
    try:
        stored = load_predictions(path, model.name)
    except GktError as exc:
        log.warning("%s; recomputing", exc)
        return None
    outputs = stored.logits if stored.logits is not None else stored.topk_logits
    if outputs is not None and not bool(torch.isfinite(outputs.float()).all()):  # stored by an older gkt
        log.warning("%s: stored predictions of %s hold NaN or infinite logits; recomputing", path, model.name)
        return None
    if torch.equal(stored.labels, dataset.labels) and stored.num_classes == model.num_classes:
        log.debug("predictions of %s on %s: stored (%s)", model.name, dataset.name, path)
        return replace(stored, from_store=True)
    log.warning("%s: stored labels do not match %s; recomputing", path, dataset.name)
    return None


def get_many(models: Sequence[Classifier], dataset: ImageDataset, device: torch.device, *, batch_size: int = 500,
             topk: int = DEFAULT_TOPK, root: str | Path | None = None, refresh: bool = False,
             data_id: str | None = None, precision: str = "fp32", workers: int | None = None,
             subsets: Sequence[tuple[torch.Tensor, str] | None] | None = None,
             temperature: float = 1.0) -> list[Predictions | None]:
    """Stored predictions of each model on ``dataset``; the models without (or all, when ``refresh``)
    run in one pass over the data (:func:`predict_many`) and are stored. ``data_id`` saves hashing the
    dataset again when the caller has its :func:`dataset_identity`. Precision enters the key: bf16 and
    fp32 outputs are stored apart. On a dataset decoded with a plan of several views a model's key names only
    its own view (:func:`seen_identities`), so an analysis, a transfer and a study share its predictions.

    ``subsets``: per model, ``(rows, tag)`` to predict on ``dataset.subset(rows, tag)`` instead, in the same
    pass (each image still decoded once), stored as predictions on that subset. Should the pass skip
    unreadable images, the predictions of a subset model computed in it come back ``None`` and are not
    stored: its rows no longer index the dataset (draw them again on what is left). ``temperature``: that of
    the sampled targets of large label spaces (part of their key; the masks' probabilities stay at T = 1)."""
    subsets = list(subsets) if subsets is not None else [None] * len(models)
    data_id = data_id or dataset_identity(dataset)
    keeps = [storage_topk(m.num_classes, topk) for m in models]
    dtype = autocast_dtype(precision, device)
    variant = [] if dtype is None else [str(dtype)]

    targets = {id(s): dataset.subset(*s) for s in subsets if s is not None}  # one per distinct subset
    keys = [""] * len(models)
    for target_key in dict.fromkeys(None if s is None else id(s) for s in subsets):
        members = [i for i, s in enumerate(subsets) if (None if s is None else id(s)) == target_key]
        target = dataset if target_key is None else targets[target_key]
        ident = data_id if target_key is None else dataset_identity(target)
        for i, seen_id in zip(members, seen_identities([models[i] for i in members], target, ident)):
            keys[i] = prediction_key(models[i], seen_id, keeps[i], *variant,
                                     *sampling_variant(keeps[i], temperature))
    results: list[Predictions | None] = [
        None if refresh else _stored(store_dir(root) / f"{key}.safetensors", m,
                                     dataset if s is None else targets[id(s)])
        for m, key, s in zip(models, keys, subsets)]
    missing = [i for i, r in enumerate(results) if r is None]
    if not missing:
        return results
    parts = {None if subsets[i] is None else id(subsets[i]) for i in missing}
    one_subset = len(parts) == 1 and None not in parts  # a pass over that subset alone
    source = targets[next(iter(parts))] if one_subset else dataset
    start, size = time.perf_counter(), len(source)
    computed = predict_many([models[i] for i in missing], source, device, batch_size, [keeps[i] for i in missing],
                            precision=precision, workers=workers, temperature=temperature,
                            rows=None if one_subset else [None if subsets[i] is None else subsets[i][0]
                                                          for i in missing])
    if len(source) != size:  # unreadable images were skipped: the predictions describe the other rows
        if any(r is not None and part is None for r, part in zip(results, subsets)):
            # stored predictions on every row mean every image decoded before: one changed in place
            raise GktError(f"{dataset.name}: images that decoded before are unreadable now; rerun with --refresh")
        computed = [None if subsets[i] is not None else preds for i, preds in zip(missing, computed)]
        full = [i for i, part in enumerate(subsets) if part is None]
        for i, seen_id in zip(full, seen_identities([models[i] for i in full], dataset, dataset_identity(dataset))):
            keys[i] = prediction_key(models[i], seen_id, keeps[i], *variant,
                                     *sampling_variant(keeps[i], temperature))
    for i, preds in zip(missing, computed):
        if preds is not None:
            results[i] = replace(preds, key=keys[i])
            save_predictions(results[i], store_dir(root) / f"{keys[i]}.safetensors", dataset.name)
    log.info("predicted %d model(s) on %s (%d samples) in %.1fs", len(missing), dataset.name, len(dataset),
             time.perf_counter() - start)
    return results


def get_predictions(model: Classifier, dataset: ImageDataset, device: torch.device, *, batch_size: int = 500,
                    topk: int = DEFAULT_TOPK, root: str | Path | None = None, refresh: bool = False,
                    data_id: str | None = None, precision: str = "fp32", workers: int | None = None,
                    temperature: float = 1.0) -> Predictions:
    """:func:`get_many` for one model: stored predictions, computed and stored when missing (or when
    ``refresh``). A corrupt or mismatching stored file is recomputed with a warning."""
    return get_many([model], dataset, device, batch_size=batch_size, topk=topk, root=root, refresh=refresh,
                    data_id=data_id, precision=precision, workers=workers, temperature=temperature)[0]
