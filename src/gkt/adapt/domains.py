"""Domain teachers: a model fine-tuned on a shifted domain of its data."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from gkt.adapt.heads import content_key
from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.io import cache_home
from gkt.data.domains import apply_domain
from gkt.data.spec import DataSpec, load_split
from gkt.data.subsets import stratified_subset
from gkt.engine.loop import evaluate, train_supervised
from gkt.models import DataInfo, load_model, save_checkpoint
from gkt.models.checkpoint import load_cached

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainFinetune:
    """Full fine-tuning of a pretrained model on a shifted domain (from its own weights, new optimiser
    state, warm-up + cosine), on a stratified ``fraction`` of the domain's train split."""

    recipe: Recipe = field(default_factory=lambda: Recipe(epochs=3, optimizer="adamw", lr=1e-3, weight_decay=0.01,
                                                          batch_size=128, warmup_epochs=0.2))
    fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "fraction": self.fraction}


def domain_teacher(spec: str, data: str, cfg: DomainFinetune, device: torch.device, data_dir: str | None = None,
                   zoo_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    """Fine-tune model ``spec`` on the shifted data spec ``data`` (``BASE@DOMAIN``); returns the cached
    ``file:`` spec and its record: test accuracy on the original and the shifted domain, before and
    after fine-tuning. Cached in ``$GKT_HOME/domains`` by contents (:func:`gkt.adapt.heads.content_key`)."""
    parsed = DataSpec.parse(data)
    if parsed.domain is None:
        raise GktError(f"{data!r} is not a shifted domain; use BASE@DOMAIN, e.g. fmnist@edges")
    base_spec = replace(parsed, domain=None)
    test_orig = load_split(base_spec, "test", data_dir=data_dir)
    test_shift = apply_domain(test_orig, parsed.domain)
    model = load_model(spec, DataInfo.from_dataset(test_orig), zoo_dir)
    train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
    train = stratified_subset(train, fraction=cfg.fraction, seed=cfg.recipe.seed)
    path = cache_home() / "domains" / f"{parsed.domain}-{content_key(model, [train, test_orig], cfg.to_dict())}"
    cached = load_cached(path, "domain_finetune")
    if cached is not None:
        return f"file:{path}", {**cached.provenance["domain_finetune"], "cached": True}
    record = {"source": spec, "domain": parsed.domain, "data": data, "train": train.name, "samples": len(train),
              **cfg.to_dict(), "acc_orig_before": evaluate(model, test_orig, device),
              "acc_domain_before": evaluate(model, test_shift, device)}
    start = time.perf_counter()
    model.requires_grad_(True)
    train_supervised(model, train, cfg.recipe, device, desc=f"{spec} on {parsed.domain}")
    record |= {"train_seconds": round(time.perf_counter() - start, 1),
               "acc_orig_after": evaluate(model, test_orig, device),
               "acc_domain_after": evaluate(model, test_shift, device)}
    model = model.cpu().eval()
    model.provenance = {**{k: v for k, v in model.provenance.items() if k == "family"},
                        "domain_finetune": record, "source_provenance": model.provenance}
    save_checkpoint(model, path)
    log.info("%s on %s: original %.2f%% -> %.2f%%, shifted %.2f%% -> %.2f%%", spec, parsed.domain,
             100 * record["acc_orig_before"], 100 * record["acc_orig_after"], 100 * record["acc_domain_before"],
             100 * record["acc_domain_after"])
    return f"file:{path}", {**record, "cached": False}
