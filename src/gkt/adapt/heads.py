"""Head adaptation to a new label space (paper appendix B.4) and transfer studies on the adapted models.

A model trained on one label space gets a new classification head for a target dataset:

* ``probe`` (default): the backbone is frozen; the inputs of the model's head (what its final linear layer
  sees in eval mode, taken by the one feature tap, so every architecture's own pooling/activation
  order is respected) are computed once without gradients, and a multinomial logistic regression is fitted
  on them (standardised features, full-batch L-BFGS, L2 strength picked on a stratified val share of the
  train split, then refitted on all of it). The fitted weights are folded back (un-standardised) into the
  new head, so the backbone — every other tensor of the state dict — stays bit-identical;
* ``full``: the probe as a starting point, then every weight is fine-tuned with cross-entropy.

Adapted models are ``file:`` checkpoints cached in ``$GKT_HOME/adapted`` (keyed by contents: the source
model's weights and preprocessing, the target data's images and labels, and the configuration) with their
provenance. :func:`transfer_study` then runs transfers between
models on a dataset through the study machinery (:mod:`gkt.experiments.grid`: one results store, one job per
student/teacher/method/seed) and adds the Δtransf vs Δacc figure per method (paper Figs. 9 and 10).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import cache_home
from gkt.core.registry import Registry
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import train_val_split
from gkt.engine.loop import evaluate, predict_outputs, train_supervised
from gkt.engine.predictions import dataset_identity
from gkt.models import Classifier, load_model, save_checkpoint, weights_hash
from gkt.models.checkpoint import load_cached
from gkt.models.features import FeatureTap
from gkt.models.heads import head_keys, with_new_head

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptConfig:
    """How a new head is fitted. ``l2`` candidates are compared on a stratified ``val_fraction`` of the
    train split (one candidate: no selection); ``finetune`` is the full fine-tuning recipe."""

    mode: str = "probe"
    l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    val_fraction: float = 0.2
    max_iter: int = 200
    finetune: Recipe = field(default_factory=lambda: Recipe(epochs=10, lr=0.01, weight_decay=5e-4, batch_size=64))
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "l2": list(self.l2), "val_fraction": self.val_fraction, "max_iter": self.max_iter,
                "seed": self.seed, **({"finetune": self.finetune.to_dict()} if self.mode == "full" else {})}


def head_module(model: Classifier) -> tuple[str, nn.Linear]:
    """The classification head (the module owning the state-dict keys whose shape depends on the class
    count); it must be one ``nn.Linear`` for a probe."""
    owners = {key.rpartition(".")[0] for key in head_keys(model.arch)}
    if len(owners) != 1:
        raise GktError(f"{model.name}: the classification head spans modules {sorted(owners)}; use full fine-tuning")
    name = owners.pop()
    module = model.net.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise GktError(f"{model.name}: head {name} is a {type(module).__name__}, not a linear layer; "
                       "a linear probe needs one (use full fine-tuning)")
    return name, module


def head_inputs(model: Classifier, dataset: ImageDataset, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """What ``model``'s head receives for every sample of ``dataset`` (eval mode, no grad): float32 ``[N, D]``."""
    name, _ = head_module(model)
    return predict_outputs(model, dataset, device, batch_size, f"features {model.name}", FeatureTap(model, name))


def _fit_standardised(z: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float, max_iter: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on float64 ``z``: mean cross-entropy + ``l2/2 · ||W||²``, L-BFGS
    from zero (deterministic)."""
    weight = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, labels) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@dataclass(frozen=True)
class Probe:
    weight: torch.Tensor  # [C, D], for the raw head inputs
    bias: torch.Tensor  # [C]
    l2: float
    val_acc: dict[str, float]  # per l2 candidate (empty without selection)
    train_acc: float


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: AdaptConfig) -> Probe:
    """A linear classifier on ``features`` (standardised for the fit, folded back into raw-feature weights),
    its L2 strength chosen by accuracy on a stratified val share of the samples."""
    x = features.double()
    labels = labels.long()

    def fit(rows: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = x[rows].mean(0), x[rows].std(0).nan_to_num(1.0).clamp_min(1e-6)
        w, b = _fit_standardised((x[rows] - mean) / std, labels[rows], num_classes, l2, cfg.max_iter)
        return w / std, b - (w / std) @ mean

    def accuracy(w: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> float:
        return ((x[rows] @ w.T + b).argmax(1) == labels[rows]).double().mean().item()

    everything = torch.arange(len(labels))
    val_acc: dict[str, float] = {}
    best = cfg.l2[0]
    if len(cfg.l2) > 1:
        train_rows, val_rows = train_val_split(labels, cfg.val_fraction, cfg.seed)
        val_acc = {f"{l2:g}": accuracy(*fit(train_rows, l2), val_rows) for l2 in cfg.l2}
        best = max(cfg.l2, key=lambda l2: (val_acc[f"{l2:g}"], l2))  # ties: the stronger regulariser
    weight, bias = fit(everything, best)
    return Probe(weight, bias, best, val_acc, accuracy(weight, bias, everything))


def adapt_model(model: Classifier, train: ImageDataset, test: ImageDataset, cfg: AdaptConfig, device: torch.device
                ) -> tuple[Classifier, dict[str, Any]]:
    """A copy of ``model`` with a head for ``train``'s classes (probe, then optionally full fine-tuning);
    returns it and its record (probe and final test accuracy on ``test``)."""
    ADAPT_MODES.check(cfg.mode)
    start = time.perf_counter()
    probe = fit_linear_probe(head_inputs(model, train, device), train.labels, train.num_classes, cfg)
    adapted = with_new_head(model, train.class_names, seed=cfg.seed)
    name, head = head_module(adapted)
    with torch.no_grad():
        head.weight.copy_(probe.weight.to(head.weight.dtype))
        head.bias.copy_(probe.bias.to(head.bias.dtype))
    record = {"mode": cfg.mode, "l2": probe.l2, "probe_val_acc": probe.val_acc, "probe_train_acc": probe.train_acc,
              "probe_test_acc": evaluate(adapted, test, device), "head": name}
    ADAPT_MODES[cfg.mode](adapted, train, cfg, device)
    record |= {"test_acc": evaluate(adapted, test, device) if cfg.mode != "probe" else record["probe_test_acc"],
               "seconds": round(time.perf_counter() - start, 1)}
    return adapted.cpu().eval(), record


def _finetune_all(model: Classifier, train: ImageDataset, cfg: AdaptConfig, device: torch.device) -> None:
    model.requires_grad_(True)
    train_supervised(model, train, replace(cfg.finetune, seed=cfg.seed), device, desc=f"fine-tune {model.name}")


# After the probe: nothing more (probe) or full fine-tuning of every weight (full).
ADAPT_MODES: Registry[Callable[[Classifier, ImageDataset, AdaptConfig, torch.device], None]] = Registry(
    "adaptation mode")
ADAPT_MODES.update({"probe": lambda model, train, cfg, device: None, "full": _finetune_all})


def content_key(model: Classifier, datasets: list[ImageDataset], config: dict[str, Any]) -> str:
    """A cache key from contents only: the model's identity (weights, architecture, preprocessing, classes),
    the datasets' identities (names, labels and image contents) and the configuration — never a spec's
    text, so two models or two versions of a data set never share an entry."""
    return stable_hash([model.identity(), [dataset_identity(d) for d in datasets], config], 32)


def adapt_cached(spec: str, data: str, cfg: AdaptConfig, device: torch.device, data_dir: str | None = None,
                 zoo_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    """Adapt model ``spec`` to data spec ``data`` (its train split; test split for the accuracies); the
    result is a ``file:`` checkpoint in ``$GKT_HOME/adapted``, reused when source weights, data and
    configuration are the same. Returns the spec and the record."""
    train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
    test = load_split(data, "test", data_dir=data_dir)
    model = load_model(spec, None, zoo_dir)
    path = cache_home() / "adapted" / f"{cfg.mode}-{content_key(model, [train, test], cfg.to_dict())}"
    cached = load_cached(path, "adapt")
    if cached is not None:
        return f"file:{path}", {**cached.provenance["adapt"], "cached": True}
    adapted, record = adapt_model(model, train, test, cfg, device)
    record = {"source": spec, "source_weights": weights_hash(model), "target": data, "train": train.name,
              "train_samples": len(train), "test": test.name, **record, "config": cfg.to_dict()}
    adapted.provenance = {**{k: v for k, v in model.provenance.items() if k == "family"}, "adapt": record,
                          "source_provenance": model.provenance}
    save_checkpoint(adapted, path)
    log.info("%s -> %s (%s): test accuracy %.2f%%", spec, data, cfg.mode, 100 * record["test_acc"])
    return f"file:{path}", {**record, "cached": False}
