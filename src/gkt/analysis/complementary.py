"""Complementary knowledge between pretrained classifiers (paper §3, Figs. 1–2; SPEC §2).

Everything is computed from stored predictions (:mod:`gkt.predictions`), vectorised over all
ordered (teacher, student) pairs:

* ``rho_pos[t, s]``: share of samples t gets right and s wrong (t's complementary knowledge for s);
  ``rho_neg[t, s] = rho_pos[s, t]``; ``delta_acc[t, s] = acc(t) - acc(s)``.
* per class k: ``class_rate[t, s, k]`` = positive flips in class k / samples of class k (Fig. 2a),
  and the *distribution* ``class_share[t, s, k]`` = the class's share of all positive flips of the pair.
* the entropy of that distribution (nats; uniform = ln K; Fig. 1b), plus a Miller–Madow corrected
  entropy, because a pair with few flips has a downward-biased plug-in estimate.
* concentration: classes are ranked by ``class_rate`` (as in Fig. 2a); for each X in :data:`TOP_X`,
  ``share_top[X]`` = share of flips in the top ``ceil(X·K)`` classes, and ``classes_holding[X]`` =
  size of the smallest ranked prefix that holds X of the positive flips ("the classes holding the
  top-X% of complementary knowledge").
* semantic similarity (Fig. 2b): mean pairwise cosine similarity of the class-name embeddings of the
  classes holding the top-X% of flips (at least 2 classes), relative to the mean over all class pairs.
* random-teacher baseline: ``rho_pos`` of a randomly initialised, seeded copy of each architecture.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gkt.analysis.semantic import ClassSimilarity, SemanticUnavailable, class_name_similarity
from gkt.analysis.stats import _describe, _entropy_trend, _nan_to_none, _nanmean, _prefix_similarity
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.data.datasets import ImageDataset
from gkt.data.subsets import stratified_indices
from gkt.engine.metrics import pairwise_class_flip_counts, pairwise_flips
from gkt.engine.predictions import DEFAULT_TOPK, Predictions, get_many
from gkt.models.classifier import Classifier, check_label_space
from gkt.models.preprocess import decode_plan_for

log = logging.getLogger(__name__)


TOP_X: tuple[float, ...] = (0.02, 0.05, 0.20, 0.50)
# The random-init teachers are a chance-level reference: on larger data they run on a seeded stratified sample
# of about this many samples (standard error of a 1% ρ_pos: 0.14 pp), not on every sample.
RANDOM_BASELINE_SAMPLES = 5000


def x_label(x: float) -> str:
    """``0.02 -> '2%'``."""
    return f"{100 * x:g}%"


@dataclass(frozen=True)
class RandomBaseline:
    """Randomly initialised (seeded) copies of the analysed architectures, as teachers."""

    teachers: tuple[str, ...]
    accuracy: torch.Tensor  # [R]
    rho_pos: torch.Tensor  # [R, M]: random teacher r for student m
    seed: int
    samples: int  # how many samples the random teachers saw (a seeded stratified sample, or all)

    def per_student(self) -> torch.Tensor:
        """``[M]``: mean ρ_pos of the random teachers for each student."""
        return self.rho_pos.mean(0)


@dataclass(frozen=True)
class GainRow:
    """One teacher's complementary knowledge for the chosen student."""

    teacher: str
    acc_teacher: float
    delta_acc: float
    rho_pos: float
    rho_neg: float
    vs_random: float
    entropy: float
    top_classes: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "acc_teacher": self.acc_teacher, "delta_acc": self.delta_acc,
                "rho_pos": self.rho_pos, "rho_neg": self.rho_neg, "rho_pos_vs_random": self.vs_random,
                "entropy": self.entropy,
                "top_classes": "; ".join(f"{name} {100 * rate:.1f}%" for name, rate in self.top_classes)}


@dataclass(frozen=True)
class GainsView:
    """"Where to find gains" for one student: teachers ranked by the knowledge they hold for it."""

    student: str
    acc_student: float
    any_teacher_rho_pos: float  # share of samples the student gets wrong and at least one teacher right
    rows: tuple[GainRow, ...]


@dataclass(frozen=True)
class Analysis:
    """Complementary-knowledge statistics of M models on one evaluation set (see module docstring)."""

    models: tuple[str, ...]
    class_names: tuple[str, ...]
    dataset: str
    accuracy: torch.Tensor  # [M]
    rho_pos: torch.Tensor  # [M, M]
    rho_neg: torch.Tensor  # [M, M]
    delta_acc: torch.Tensor  # [M, M]
    class_counts: torch.Tensor  # [K]
    class_flips: torch.Tensor  # int [M, M, K]
    class_rate: torch.Tensor  # [M, M, K]
    class_share: torch.Tensor  # [M, M, K]; NaN where a pair has no flips
    class_order: torch.Tensor  # [M, M, K]: classes ranked by class_rate, descending
    entropy: torch.Tensor  # [M, M] nats
    entropy_mm: torch.Tensor  # [M, M] Miller–Madow corrected
    share_top: dict[float, torch.Tensor]  # X -> [M, M]
    classes_holding: dict[float, torch.Tensor]  # X -> [M, M] number of classes
    any_teacher_rho_pos: torch.Tensor  # [M]
    random: RandomBaseline | None = None
    similarity: ClassSimilarity | None = None
    semantic_rel: dict[float, torch.Tensor] = field(default_factory=dict)  # X -> [M, M] relative similarity
    semantic_note: str = ""

    @property
    def num_samples(self) -> int:
        return int(self.class_counts.sum())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pair_mask(self) -> torch.Tensor:
        """``bool [M, M]``: ordered pairs of distinct models."""
        return ~torch.eye(len(self.models), dtype=torch.bool)

    def index(self, model: str) -> int:
        if model not in self.models:
            raise GktError(f"{model!r} is not among the analysed models: {', '.join(self.models)}")
        return self.models.index(model)

    def random_per_student(self) -> torch.Tensor | None:
        return None if self.random is None else self.random.per_student()

    def top_classes(self, t: int, s: int, n: int = 3) -> tuple[tuple[str, float], ...]:
        ranked = self.class_order[t, s, :n].tolist()
        return tuple((self.class_names[k], self.class_rate[t, s, k].item()) for k in ranked
                     if self.class_flips[t, s, k] > 0)

    def gains(self, student: str) -> GainsView:
        """Teachers ranked by ρ_pos for ``student``, with Δacc, ρ_neg and where the knowledge sits."""
        s = self.index(student)
        baseline = self.random_per_student()
        rows = [GainRow(self.models[t], self.accuracy[t].item(), self.delta_acc[t, s].item(),
                        self.rho_pos[t, s].item(), self.rho_neg[t, s].item(),
                        float("nan") if baseline is None else (self.rho_pos[t, s] / baseline[s]).item(),
                        self.entropy[t, s].item(), self.top_classes(t, s))
                for t in range(len(self.models)) if t != s]
        rows.sort(key=lambda r: -r.rho_pos)
        return GainsView(student, self.accuracy[s].item(), self.any_teacher_rho_pos[s].item(), tuple(rows))

    def overview(self) -> list[dict[str, Any]]:
        """Per student: accuracy, the teacher holding most complementary knowledge, and all teachers together."""
        masked = self.rho_pos.masked_fill(~self.pair_mask, -1.0)
        best = masked.argmax(0)
        return [{"student": name, "acc": self.accuracy[s].item(), "best_teacher": self.models[int(best[s])],
                 "rho_pos": self.rho_pos[best[s], s].item(), "delta_acc": self.delta_acc[best[s], s].item(),
                 "any_teacher_rho_pos": self.any_teacher_rho_pos[s].item()}
                for s, name in enumerate(self.models)]

    def pair_rows(self) -> list[dict[str, Any]]:
        """One row per ordered pair (teacher ≠ student) with every pair statistic."""
        baseline = self.random_per_student()
        rows = []
        for t, s in self.pair_mask.nonzero().tolist():
            row = {"teacher": self.models[t], "student": self.models[s], "acc_teacher": self.accuracy[t].item(),
                   "acc_student": self.accuracy[s].item(), "delta_acc": self.delta_acc[t, s].item(),
                   "rho_pos": self.rho_pos[t, s].item(), "rho_neg": self.rho_neg[t, s].item(),
                   "rho_pos_vs_random": float("nan") if baseline is None else (self.rho_pos[t, s] / baseline[s]).item(),
                   "positive_flips": int(self.class_flips[t, s].sum()), "entropy": self.entropy[t, s].item(),
                   "entropy_normalized": self.entropy[t, s].item() / math.log(self.num_classes),
                   "entropy_miller_madow": self.entropy_mm[t, s].item()}
            row |= {f"share_top{x_label(x)}": v[t, s].item() for x, v in self.share_top.items()}
            row |= {f"classes_holding{x_label(x)}": int(v[t, s]) for x, v in self.classes_holding.items()}
            row |= {f"semsim_top{x_label(x)}": v[t, s].item() for x, v in self.semantic_rel.items()}
            row["top_classes"] = "; ".join(f"{n} {100 * r:.1f}%" for n, r in self.top_classes(t, s))
            rows.append(row)
        return rows

    def class_rows(self) -> list[dict[str, Any]]:
        """Long format: per ordered pair, every class in ranked order with its flips, rate and share."""
        rows = []
        for t, s in self.pair_mask.nonzero().tolist():
            for rank, k in enumerate(self.class_order[t, s].tolist()):
                rows.append({"teacher": self.models[t], "student": self.models[s], "rank": rank + 1,
                             "class": self.class_names[k], "flips": int(self.class_flips[t, s, k]),
                             "class_samples": int(self.class_counts[k]), "rate": self.class_rate[t, s, k].item(),
                             "share": self.class_share[t, s, k].item()})
        return rows

    def summary(self) -> dict[str, Any]:
        """Headline numbers: flips over pairs, random baseline, entropy trend, concentration, semantics."""
        mask = self.pair_mask
        pos = self.rho_pos[mask]
        out: dict[str, Any] = {
            "dataset": self.dataset, "models": len(self.models), "ordered_pairs": int(mask.sum()),
            "samples": self.num_samples, "classes": self.num_classes,
            "accuracy": dict(zip(self.models, self.accuracy.tolist())),
            "rho_pos": {**_describe(pos), "share_pairs_ge_1pct": (pos >= 0.01).double().mean().item()},
            "rho_neg": _describe(self.rho_neg[mask]),
            "entropy": {"uniform_ln_c": math.log(self.num_classes),
                        **_entropy_trend(self.entropy, self.delta_acc, self.rho_pos),
                        "miller_madow": _entropy_trend(self.entropy_mm, self.delta_acc, self.rho_pos)},
            "concentration": {x_label(x): {"share_of_flips_in_top_classes": _nanmean(self.share_top[x][mask]),
                                           "top_classes": max(1, math.ceil(round(x * self.num_classes, 9))),
                                           "classes_holding_mean": self.classes_holding[x][mask].double().mean().item()}
                              for x in self.share_top},
        }
        if self.random is not None:
            per_student = self.random.per_student()
            ratio = (self.rho_pos / per_student[None, :])[mask]
            out["random_baseline"] = {
                "teachers": list(self.random.teachers), "seed": self.random.seed, "samples": self.random.samples,
                "accuracy": self.random.accuracy.tolist(), "chance_1_over_c": 1 / self.num_classes,
                "uniform_guess_rho_pos_mean": ((1 - self.accuracy) / self.num_classes).mean().item(),
                "rho_pos_mean": self.random.rho_pos.mean().item(), "rho_pos_max": self.random.rho_pos.max().item(),
                "pair_over_random_min": ratio.min().item(), "pair_over_random_median": ratio.median().item(),
                "share_pairs_above_5x_random": (ratio > 5).double().mean().item(),
                "share_pairs_above_every_random_teacher":
                    (self.rho_pos > self.random.rho_pos.amax(0)[None, :])[mask].double().mean().item()}
        if self.similarity is not None:
            out["semantic"] = {"available": True, "model": self.similarity.model,
                               "mean_class_similarity": self.similarity.mean_offdiagonal,
                               "relative_similarity_top_x": {x_label(x): _describe(v[mask])
                                                             for x, v in self.semantic_rel.items()}}
        else:
            out["semantic"] = {"available": False, "note": self.semantic_note}
        return out

    def matrices(self) -> dict[str, Any]:
        """The pair matrices as nested lists (rows = teachers, columns = students) for JSON."""
        return {"models": list(self.models), "accuracy": self.accuracy.tolist(), "rho_pos": self.rho_pos.tolist(),
                "rho_neg": self.rho_neg.tolist(), "delta_acc": self.delta_acc.tolist(),
                "entropy": _nan_to_none(self.entropy.tolist()),
                "random_rho_pos_per_student": None if self.random is None else self.random.per_student().tolist()}


def _check_predictions(preds: Sequence[Predictions], class_names: Sequence[str]) -> None:
    if len(preds) < 2:
        raise GktError(f"complementary knowledge needs at least 2 models, got {len(preds)}")
    names = [p.model_name for p in preds]
    if len(set(names)) != len(names):
        raise GktError(f"each model may appear once; duplicates: {sorted({n for n in names if names.count(n) > 1})}")
    if len(class_names) < 2:
        raise GktError("the label space needs at least 2 classes")
    for p in preds:
        if p.num_classes != len(class_names):
            raise GktError(f"{p.model_name} predicts {p.num_classes} classes but the data has {len(class_names)}")
        if not torch.equal(p.labels, preds[0].labels):
            raise GktError(f"predictions of {p.model_name} and {preds[0].model_name} were made on different samples")
    if not len(preds[0]):
        raise GktError("the evaluation set is empty")


def analyze_predictions(preds: Sequence[Predictions], class_names: Sequence[str], *, dataset: str = "",
                        random_preds: Sequence[Predictions] = (), random_seed: int = 0,
                        random_rows: torch.Tensor | None = None, similarity: ClassSimilarity | None = None,
                        semantic_note: str = "", top_x: Sequence[float] = TOP_X) -> Analysis:
    """All pair statistics from stored predictions (no forward passes); ``random_preds`` were made on
    ``random_rows`` of the samples (default: all)."""
    _check_predictions(preds, class_names)
    k = len(class_names)
    labels = preds[0].labels
    correct = torch.stack([p.correct for p in preds])  # [M, N]
    accuracy = correct.double().mean(1)
    rho_pos, rho_neg = pairwise_flips(correct)
    class_counts = torch.bincount(labels, minlength=k)
    flips = pairwise_class_flip_counts(correct, labels, k)
    total = flips.sum(-1, keepdim=True).double()
    rate = flips.double() / class_counts.clamp_min(1)
    share = flips.double() / total  # NaN (0/0) for pairs without flips
    has_flips = total.squeeze(-1) > 0
    entropy = -torch.special.xlogy(share, share).sum(-1)
    nonzero = (flips > 0).sum(-1).double()
    entropy_mm = entropy + (nonzero - 1) / (2 * total.squeeze(-1))
    # Rank classes by their complementary knowledge (Fig. 2a); ties keep class order.
    order = rate.argsort(dim=-1, descending=True, stable=True)
    cum = share.gather(-1, order).cumsum(-1)
    share_top = {x: cum[..., max(1, math.ceil(round(x * k, 9))) - 1] for x in top_x}
    holding = {x: ((cum < x - 1e-9).sum(-1) + 1).clamp_max(k).masked_fill(~has_flips, 0) for x in top_x}
    others_right = correct.sum(0, keepdim=True) - correct.int()  # [M, N]: other models right on each sample
    any_teacher = (~correct & (others_right > 0)).double().mean(1)
    semantic_rel = {}
    if similarity is not None:
        rank = order.argsort(-1)
        mean_all = similarity.mean_offdiagonal
        for x, n in holding.items():
            semantic_rel[x] = (_prefix_similarity(rank, n.clamp_min(2), similarity.matrix) / mean_all - 1
                               ).masked_fill(~has_flips, float("nan"))
    random = None
    if random_preds:
        rows = torch.arange(len(labels)) if random_rows is None else random_rows
        for p in random_preds:
            if p.num_classes != k or not torch.equal(p.labels, labels[rows]):
                raise GktError(f"predictions of {p.model_name} were not made on the random baseline's samples "
                               f"({len(rows)} of the {len(labels)} analysed)")
        c_rand = torch.stack([p.correct for p in random_preds]).double()
        random = RandomBaseline(tuple(p.model_name for p in random_preds), c_rand.mean(1),
                                (c_rand @ (1 - correct[:, rows].double()).T) / len(rows), random_seed, len(rows))
    return Analysis(tuple(p.model_name for p in preds), tuple(class_names), dataset, accuracy, rho_pos, rho_neg,
                    accuracy[:, None] - accuracy[None, :], class_counts, flips, rate, share, order,
                    entropy.masked_fill(~has_flips, float("nan")), entropy_mm.masked_fill(~has_flips, float("nan")),
                    share_top, holding, any_teacher, random, similarity, semantic_rel, semantic_note)


def random_teachers(models: Sequence[Classifier], seed: int = 0) -> list[Classifier]:
    """One randomly initialised copy (seeded) of each distinct architecture + preprocessing in ``models``."""
    teachers: dict[str, Classifier] = {}
    for model in models:
        key = stable_hash([model.arch.to_dict(), model.preprocess.to_dict()])
        if key not in teachers:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                teachers[key] = Classifier.create(model.arch, model.preprocess, model.class_names,
                                                  name=f"random({model.name})").eval()
    return list(teachers.values())


def check_models(models: Sequence[Classifier], dataset: ImageDataset) -> None:
    """Clear errors for fewer than 2 models, mismatching label spaces, or an empty dataset."""
    if not models:
        raise GktError("no models selected: give --models SPEC [SPEC ...] (or `zoo` for every built zoo model)")
    if len(models) < 2:
        raise GktError(f"complementary knowledge needs at least 2 models, got only {models[0].name}")
    for model in models[1:]:
        if list(model.class_names) != list(models[0].class_names):
            raise GktError(f"{model.name} and {models[0].name} have different label spaces "
                           f"({model.num_classes} vs {models[0].num_classes} classes, e.g. "
                           f"{model.class_names[:3]} vs {models[0].class_names[:3]}); all models must share one")
    check_label_space(models[0], dataset.class_names, f"the dataset {dataset.name}")
    if not len(dataset):
        raise GktError(f"the dataset {dataset.name} is empty")


def analyze(models: Sequence[Classifier], dataset: ImageDataset, device: torch.device | None = None, *,
            batch_size: int = 500, topk: int = DEFAULT_TOPK, store_root: str | Path | None = None,
            refresh: bool = False, random_baseline: bool = True, seed: int = 0, semantic: bool = True,
            top_x: Sequence[float] = TOP_X, precision: str = "fp32", decode_size: int | None = None,
            workers: int | None = None, random_baseline_samples: int = RANDOM_BASELINE_SAMPLES) -> Analysis:
    """Complementary knowledge of every ordered pair of ``models`` on ``dataset``: one pass over the data
    runs every model without stored predictions on each batch; the random-init teacher of each distinct
    architecture (the baseline) joins that pass, or, on more than ``random_baseline_samples`` samples, runs
    on a seeded stratified sample of about that many. Encoded images are decoded once per batch into every
    model's own eval view (:func:`decode_plan_for`; ``decode_size``: one plain square decode instead),
    autocast in ``precision``."""
    device = device or torch.device("cpu")
    check_models(models, dataset)
    dataset = dataset.at_decode_size(decode_size) if decode_size else \
        dataset.at_decode_plan(decode_plan_for(m.preprocess for m in models))
    randoms = random_teachers(models, seed) if random_baseline else []
    passes = dict(device=device, batch_size=batch_size, topk=topk, root=store_root, refresh=refresh,
                  precision=precision, workers=workers)
    sample_tag = f"random-baseline-sample-{seed}"

    def sample() -> tuple[torch.Tensor, str] | None:
        if len(dataset) <= random_baseline_samples:
            return None  # the random teachers see every row
        fraction = random_baseline_samples / len(dataset)
        return stratified_indices(dataset.labels, fraction=fraction, seed=seed), sample_tag

    size, subset = len(dataset), sample()
    everything = get_many([*models, *randoms], dataset, subsets=[None] * len(models) + [subset] * len(randoms),
                          **passes)
    if randoms and subset is not None and len(dataset) != size:  # images skipped: sample again from the rest
        subset = sample()
        everything[len(models):] = get_many(randoms, dataset if subset is None else dataset.subset(*subset), **passes)
    random_rows = None if subset is None else subset[0]
    preds, random_preds = everything[:len(models)], everything[len(models):]
    stored = sum(p.from_store for p in everything)
    log.info("forward passes: %d run, %d reused from the prediction store", len(everything) - stored, stored)
    similarity, note = None, "disabled"
    if semantic:
        try:
            similarity = class_name_similarity(dataset.class_names)
            note = f"class names embedded with {similarity.model}"
        except SemanticUnavailable as exc:
            note = str(exc)
            log.warning("%s", note)
    return analyze_predictions(preds, dataset.class_names, dataset=dataset.name, random_preds=random_preds,
                               random_seed=seed, random_rows=random_rows, similarity=similarity, semantic_note=note,
                               top_x=top_x)
