"""Head adaptation to a new label space (paper appendix B.4) and transfer studies on the adapted models.

A model trained on one label space gets a new classification head for a target dataset:

* ``probe`` (default): the backbone is frozen; the inputs of the model's head (what its final linear layer
  sees in eval mode, captured by a forward pre-hook, so every architecture's own pooling/activation
  order is respected) are computed once without gradients, and a multinomial logistic regression is fitted
  on them (standardised features, full-batch L-BFGS, L2 strength picked on a stratified val share of the
  train split, then refitted on all of it). The fitted weights are folded back (un-standardised) into the
  new head, so the backbone — every other tensor of the state dict — stays bit-identical;
* ``full``: the probe as a starting point, then every weight is fine-tuned with cross-entropy.

Adapted models are ``file:`` checkpoints cached in ``$GKT_HOME/adapted`` (keyed by source weights,
target data and configuration) with their provenance. :func:`transfer_study` then runs transfers between
models on a dataset through the study machinery (:mod:`gkt.studies`: one results store, one job per
student/teacher/method/seed) and adds the Δtransf vs Δacc figure per method (paper Figs. 9 and 10).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gkt.data import ImageDataset, iterate_batches, load_split, train_val_split
from gkt.kdep import head_keys, with_new_head
from gkt.models import Classifier, load_checkpoint, load_model, save_checkpoint, weights_hash
from gkt.report import format_table
from gkt.studies import LocalBackend, ResultsStore, expand_grid, job_key, run_study, transfer_job
from gkt.study_report import STORE_NAME, pair_means, pyplot, save_figure, write_study_outputs
from gkt.training import Recipe, evaluate, train_supervised
from gkt.utils import GktError, atomic_path, cache_home, stable_hash

log = logging.getLogger(__name__)

# ============================================================================ head adaptation


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


@torch.no_grad()
def head_inputs(model: Classifier, dataset: ImageDataset, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """What ``model``'s head receives for every sample of ``dataset`` (eval mode, no grad): float32 ``[N, D]``."""
    _, head = head_module(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].float().cpu()))
    was_training = model.training
    model.to(device).eval()
    try:
        for images, _, _ in tqdm(iterate_batches(dataset, batch_size), total=math.ceil(len(dataset) / batch_size),
                                 desc=f"features {model.name}", leave=False, disable=None):
            model(images.to(device, non_blocking=True))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).flatten(1)


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
    if cfg.mode not in ADAPT_MODES:
        raise GktError(f"unknown adaptation mode {cfg.mode!r}; use {' or '.join(ADAPT_MODES)}")
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
ADAPT_MODES: dict[str, Callable[[Classifier, ImageDataset, AdaptConfig, torch.device], None]] = {
    "probe": lambda model, train, cfg, device: None,
    "full": _finetune_all,
}


def slug(text: str) -> str:
    """A file-name-safe short form of a spec."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-60:]


def adapt_cached(spec: str, data: str, cfg: AdaptConfig, device: torch.device, data_dir: str | None = None,
                 zoo_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    """Adapt model ``spec`` to data spec ``data`` (its train split; test split for the accuracies); the
    result is a ``file:`` checkpoint in ``$GKT_HOME/adapted``, reused when source weights, data and
    configuration are the same. Returns the spec and the record."""
    train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
    test = load_split(data, "test", data_dir=data_dir)
    model = load_model(spec, None, zoo_dir)
    key = stable_hash([weights_hash(model), model.arch.to_dict(), model.preprocess.to_dict(), train.fingerprint(),
                       len(train), test.fingerprint(), len(test), cfg.to_dict()])
    path = cache_home() / "adapted" / f"{slug(spec)}-{slug(data)}-{cfg.mode}-{key}"
    if path.with_suffix(".json").is_file():
        return f"file:{path}", {**load_checkpoint(path).provenance["adapt"], "cached": True}
    adapted, record = adapt_model(model, train, test, cfg, device)
    record = {"source": spec, "source_weights": weights_hash(model), "target": data, "train": train.name,
              "train_samples": len(train), "test": test.name, **record, "config": cfg.to_dict()}
    adapted.provenance = {**{k: v for k, v in model.provenance.items() if k == "family"}, "adapt": record,
                          "source_provenance": model.provenance}
    save_checkpoint(adapted, path)
    log.info("%s -> %s (%s): test accuracy %.2f%%", spec, data, cfg.mode, 100 * record["test_acc"])
    return f"file:{path}", {**record, "cached": False}


# ============================================================================ transfer studies on new data


@dataclass(frozen=True)
class StudyPlan:
    """A transfer grid: every student × teacher (different specs) × method × seed on ``data``'s train split
    (a stratified ``fraction`` as transfer set), evaluated on its test split."""

    students: Sequence[str]
    teachers: Sequence[str]
    methods: Sequence[str]
    seeds: Sequence[int]
    data: str
    fraction: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)  # epochs, lr, batch_size (omitted: transfer defaults)
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_dir: str | None = None
    zoo_dir: str | None = None
    device: str = "auto"

    def jobs(self) -> list[dict[str, Any]]:
        base = {"data": self.data, "fraction": self.fraction, "data_dir": self.data_dir, "zoo_dir": self.zoo_dir,
                "device": self.device, **{k: v for k, v in self.settings.items() if v is not None}}
        axes = {"student": list(self.students), "teacher": list(self.teachers), "method": list(self.methods),
                "seed": list(self.seeds)}
        jobs = expand_grid(base, axes, skip=lambda j: j["student"] == j["teacher"])
        for job in jobs:
            job["method_args"] = dict(self.method_args.get(job["method"], {}))
        return jobs


def transfer_study(plan: StudyPlan, run_dir: Path, labels: dict[str, str], workers: int = 1,
                   threads: int | None = None, figure: str = "fig9_delta_transf_vs_delta_acc.png",
                   title: str = "Transfer delta vs teacher-student accuracy gap", store_path: Path | None = None
                   ) -> dict[str, Any]:
    """Run ``plan``'s jobs into the results store (``store_path``, default ``run_dir/results.sqlite``; jobs
    finished there are skipped), then write, from the plan's finished jobs, the study tables and figures,
    ``by_method.csv`` (:func:`method_summary`) and the Δtransf vs Δacc figure. ``labels`` gives short names
    for model specs in tables and the figure."""
    store = ResultsStore(store_path or run_dir / STORE_NAME)
    jobs = plan.jobs()
    counts = run_study(transfer_job, jobs, store, LocalBackend(workers, threads))
    wanted = {job_key(j) for j in jobs}
    records = [{**r.config, **r.metrics, "student": labels.get(r.config["student"], r.config["student"]),
                "teacher": labels.get(r.config["teacher"], r.config["teacher"])}
               for r in store.rows() if r.key in wanted]
    if not records:
        raise GktError(f"no transfer job finished ({counts['failed']} failed); see {store.path}")
    write_study_outputs(run_dir, records)
    summary = method_summary(records)
    write_rows(run_dir / "by_method.csv", summary)
    plot_delta_transf_vs_gap(pair_means(records), run_dir / figure, title)
    table = format_table(summary, markdown=True)
    previous = (run_dir / "summary.md").read_text() if (run_dir / "summary.md").is_file() else ""
    with atomic_path(run_dir / "summary.md") as tmp:
        tmp.write_text(f"## Δtransf by method, weaker vs stronger teachers (pp, mean ± std over seeds)\n\n{table}\n\n"
                       f"{previous}")
    return {"counts": counts, "summary": summary, "records": records}


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.2f} ± {spread:.2f}"


def method_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, in percentage points: Δtransf averaged over the pairs with a weaker teacher
    (acc_teacher < acc_student_before on the evaluation data) and over those with a stronger one, as mean ±
    sample std over seeds; the worst pair (seed mean); the share of pairs whose seed-mean Δtransf is below
    −0.1; the mean knowledge loss."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    rows = []
    for method, rs in by_method.items():
        row: dict[str, Any] = {"method": method, "pairs": len({(r["student"], r["teacher"]) for r in rs}),
                               "seeds": len({r["seed"] for r in rs})}
        for side, keep in (("weaker", lambda r: r["acc_teacher"] < r["acc_student_before"]),
                           ("stronger", lambda r: r["acc_teacher"] >= r["acc_student_before"])):
            per_seed: dict[int, list[float]] = defaultdict(list)
            for r in rs:
                if keep(r):
                    per_seed[r["seed"]].append(100 * r["delta_transf"])
            row[f"{side}_teacher_pairs"] = len({(r["student"], r["teacher"]) for r in rs if keep(r)})
            row[f"delta_transf_{side}_pp"] = _mean_std([statistics.mean(v) for v in per_seed.values()])
        per_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in rs:
            per_pair[(r["student"], r["teacher"])].append(100 * r["delta_transf"])
        pair_means = [statistics.mean(v) for v in per_pair.values()]
        row["worst_pair_pp"] = round(min(pair_means), 2)
        row["pairs_below_-0.1pp_%"] = round(100 * statistics.mean(m < -0.1 for m in pair_means), 1)
        row["knowledge_loss_pp"] = round(100 * statistics.mean(r["knowledge_loss"] for r in rs), 2)
        rows.append(row)
    return sorted(rows, key=lambda r: r["method"])


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows)


def plot_delta_transf_vs_gap(pairs: Sequence[dict[str, Any]], path: Path, title: str, bins: int = 5) -> Path:
    """Paper Figs. 9/10: one panel per method; every pair's Δtransf (mean ± std over seeds) against
    Δacc = acc(teacher) − acc(student) on the evaluation data, and the paper's summary line: the mean of
    the top 25% of pairs in each of ``bins`` equal-width Δacc bins."""
    plt = pyplot()
    methods = sorted({p["method"] for p in pairs})
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.8), sharey=True, squeeze=False)
    gaps = [100 * p["delta_acc"] for p in pairs]
    lo, hi = min(gaps), max(gaps)
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    for ax, method in zip(axes[0], methods):
        ps = [p for p in pairs if p["method"] == method]
        ax.errorbar([100 * p["delta_acc"] for p in ps], [100 * p["delta_transf"] for p in ps],
                    yerr=[100 * p.get("delta_transf_std", 0.0) for p in ps], fmt="o", ms=4, alpha=0.6, capsize=2,
                    label="pair (mean ± std over seeds)")
        xs, ys = [], []
        for a, b in zip(edges, edges[1:]):
            inside = sorted((100 * p["delta_transf"] for p in ps if a <= 100 * p["delta_acc"] <= b), reverse=True)
            if inside:
                xs.append((a + b) / 2)
                ys.append(statistics.mean(inside[: max(1, len(inside) // 4)]))
        ax.plot(xs, ys, color="black", marker="s", label="top 25% per Δacc bin")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6, linestyle=":")
        ax.set(title=method, xlabel="Δacc = acc(teacher) − acc(student) (pp)")
    axes[0][0].set_ylabel("Δtransf (pp)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)
