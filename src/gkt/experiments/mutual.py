"""``gkt mutual``: models that teach each other at once (:mod:`gkt.transfer.mutual`), each result certified
like ``gkt improve``'s or the original kept.

The transfer data is the train split (labels unused with ``unlabelled``); the held-out split (as in
``gkt improve``: the data's test split, or a val split) is used once per model: its per-image correctness
before and after gives the model's Δtransf, knowledge gain and loss, and — with ``certify`` — the
certificate (exact one-sided McNemar test and lower confidence bound of Δacc at ``risk``). A model whose
result is not certified keeps its original: ``final.json``'s ``model`` is then the input spec.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gkt.analysis.certify import certify as certificate_of
from gkt.core.errors import GktError
from gkt.core.io import new_run_dir, write_csv, write_json
from gkt.core.runtime import resolve_device, seed_everything
from gkt.engine.distributed import DistContext
from gkt.engine.loop import Runtime, predict_logits
from gkt.engine.metrics import correctness, knowledge_gain_loss
from gkt.engine.predictions import get_many
from gkt.experiments.improve import ImproveConfig, load_models, load_splits, write_model
from gkt.transfer import decoded_for
from gkt.transfer.mutual import MutualConfig, run_mutual


@dataclass
class MutualResult:
    """What ``gkt mutual`` did: ``final`` is ``final.json`` (one entry per input model in ``models``)."""

    final: dict[str, Any]
    run_dir: Path
    models: list[str] = field(default_factory=list)  # the spec to use for each input: improved or the original


def mutual(models: Sequence[str], *, data: str = ImproveConfig.data, unlabelled: bool = False,
           rule: str = MutualConfig.rule, ce: float = MutualConfig.ce, certify: bool = True,
           risk: float = ImproveConfig.risk, epochs: int = MutualConfig.epochs, lr: float = MutualConfig.lr,
           fraction: float = ImproveConfig.fraction, batch_size: int = MutualConfig.batch_size,
           temperature: float = MutualConfig.temperature, augment: Sequence[str] = (),
           held_out: str = ImproveConfig.held_out, val_fraction: float = ImproveConfig.val_fraction,
           seed: int = 0, class_map: str | Path | dict[str, Any] | None = None, data_dir: str | None = None,
           zoo_dir: str | None = None, precision: str = ImproveConfig.precision,
           device: str | torch.device = "auto", out: str | Path = "runs", run_dir: str | Path | None = None,
           say: Callable[[str], None] = print, dist: DistContext | None = None) -> MutualResult:
    """Train ``models`` as students of each other and certify each result (see the module docstring); the
    keyword arguments are ``gkt mutual``'s options. Writes ``final.json``, ``models.csv``, each certified
    model as ``file:RUN_DIR/modelN`` (and in its library's format where it has one) and ``findings.json``.
    Under ``torchrun`` (``dist``) every rank trains its share; rank 0 evaluates, certifies and writes."""
    from gkt.models.class_map import read_class_map

    start = time.perf_counter()
    specs = list(models)
    if len(specs) < 2:
        raise GktError("mutual transfer needs at least two models: --models SPEC SPEC [SPEC ...]")
    if len(set(specs)) != len(specs):
        raise GktError(f"a model is given twice ({', '.join(s for s in specs if specs.count(s) > 1)}); give each once")
    if isinstance(class_map, (str, Path)):
        class_map = read_class_map(class_map)
    data_cfg = ImproveConfig(data=data, unlabelled=unlabelled, risk=risk, fraction=fraction, held_out=held_out,
                             val_fraction=val_fraction, batch_size=batch_size, seed=seed, class_map=class_map,
                             data_dir=data_dir, zoo_dir=zoo_dir, precision=precision)
    config = MutualConfig(epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature, rule=rule, ce=ce,
                          unlabelled=unlabelled, augment=tuple(augment), seed=seed)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    dist = dist or DistContext()
    if run_dir is None:
        run_dir = dist.broadcast(new_run_dir(out, "mutual") if dist.is_main else None)
    run_dir = Path(run_dir)
    splits = load_splits(data, data_dir, held_out, val_fraction, data_cfg.selection_share, fraction, seed)
    transfer, test, source = splits.transfer, splits.held_out, splits.val_source  # the models' data too (cached)
    if len(transfer) < batch_size:
        raise GktError(f"{transfer.name}: {len(transfer)} transfer images is fewer than one batch of {batch_size}; "
                       f"lower --batch-size to {len(transfer)} or less, or give more data")
    loaded = load_models(specs, data_cfg)
    if len({m.identity() for m in loaded}) != len(loaded):
        raise GktError("two of --models name the same weights; give each model once")
    transfer, test = decoded_for(loaded, transfer, test)
    say(f"mutual transfer between {len(specs)} models ({config.rule} peer, "
        f"{'label-free' if unlabelled else 'labelled'}) on {len(transfer)} images, {epochs} epoch(s), lr {lr:g}; "
        f"{'certified' if certify else 'evaluated'} on {len(test)} held-out images from {source}")
    seed_everything(seed)
    outcome = run_mutual(loaded, transfer, None, config, torch_device,
                         Runtime(precision=precision, evaluate_every_epoch=False, dist=dist))
    if not dist.is_main:  # the same weights on every rank: rank 0 evaluates, certifies and writes
        return MutualResult({}, run_dir, [])
    before = get_many(loaded, test, torch_device, precision=precision)
    labels = test.labels
    entries, written = [], []
    for i, (spec, original, trained, stored) in enumerate(zip(specs, loaded, outcome.models, before)):
        after = correctness(predict_logits(trained, test, torch_device, desc="evaluate", precision=precision), labels)
        gain, loss = knowledge_gain_loss(stored.correct, after)
        cert = certificate_of(stored.correct, after, risk)
        accepted = cert.accepted or not certify
        model_spec, export = spec, None
        if accepted:
            trained.name = original.name
            trained.provenance = {"mutual": {"models": specs, "config": config.to_dict(),
                                             "certificate": cert.to_dict() if certify else None},
                                  "student_provenance": original.provenance}
            model_spec, export = write_model(trained, run_dir, say, name=f"model{i}")
        entries.append({"spec": spec, "model": model_spec, "accepted": accepted if certify else None,
                        "acc_before": cert.acc_before, "acc_after": cert.acc_after, "delta_transf": cert.delta_acc,
                        "knowledge_gain": gain, "knowledge_loss": loss,
                        "certificate": cert.to_dict() if certify else None, "export": export})
        written.append(model_spec)
    final = {"status": "ok", "models": entries, "config": config.to_dict(), "data": data, "held_out_from": source,
             "transfer_images": len(transfer), "held_out_images": len(test), "certify": certify, "risk": risk,
             "history": outcome.history, "seconds": round(time.perf_counter() - start, 1)}
    write_json(run_dir / "final.json", final)
    rows = [{k: v for k, v in e.items() if k not in ("certificate", "export")} | (
        {f"cert_{k}": v for k, v in e["certificate"].items() if k in ("turned_right", "turned_wrong", "lower_bound",
                                                                      "p_value")} if e["certificate"] else {})
        for e in entries]
    write_csv(run_dir / "models.csv", rows)
    sentences = [_sentence(e, certify) for e in entries]
    write_json(run_dir / "findings.json", {"sentences": sentences, "claims": []})
    for sentence in sentences:
        say(sentence)
    return MutualResult(final, run_dir, written)


def _sentence(entry: dict[str, Any], certify: bool) -> str:
    what = (f"{entry['spec']}: {100 * entry['acc_before']:.2f}% → {100 * entry['acc_after']:.2f}% "
            f"(Δtransf {100 * entry['delta_transf']:+.2f} pp, gain {100 * entry['knowledge_gain']:.2f}, loss "
            f"{100 * entry['knowledge_loss']:.2f})")
    if not certify:
        return f"{what}; written as {entry['model']} (not certified: --no-certify)."
    cert = entry["certificate"]
    bound = f"{100 * (1 - cert['risk']):g}% lower bound {100 * cert['lower_bound']:+.2f} pp, p = {cert['p_value']:.3g}"
    if entry["accepted"]:
        return f"{what}: certified ({bound}); improved model {entry['model']}."
    return f"{what}: not certified ({bound}); the original is kept."
