"""The KDEP benchmark: pre-training methods x downstream tasks x seeds."""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.hashing import stable_hash
from gkt.core.io import cache_home
from gkt.data.datasets import ImageDataset
from gkt.data.spec import DataSpec, load_split
from gkt.data.subsets import stratified_indices, stratified_subset
from gkt.engine.loop import evaluate, make_optimizer, train_supervised
from gkt.engine.predictions import dataset_identity
from gkt.experiments.grid import (
    STORE_NAME,
    LocalBackend,
    RayBackend,
    ResultsStore,
    failed_rows,
    job_key,
    run_study,
)
from gkt.kdep.objectives import OBJECTIVES, ObjectiveConfig
from gkt.kdep.pretrain import build_student, finetune, load_teacher, pretrain
from gkt.models import (
    Classifier,
    save_checkpoint,
)
from gkt.models.checkpoint import load_cached
from gkt.models.zoo import get_entry
from gkt.reporting.tables import format_mean_std, mean_std

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One pre-training arm of the benchmark: an objective (``None``: no pre-training) on a share of the
    pre-training pool."""

    objective: str | None
    fraction: float

    @property
    def name(self) -> str:
        return "none" if self.objective is None else f"{self.objective}-{100 * self.fraction:g}%"


def default_methods(fraction: float) -> tuple[Method, ...]:
    return (Method(None, 0.0), Method("supervised", fraction), Method("supervised", 1.0), Method("logit-kd", fraction),
            Method("linear-align", fraction), Method("kdep", fraction))


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark run. All pre-training arms share one recipe (same epochs,
    hence the same number of student steps on the same 10% data: equal compute); supervised-100% runs
    the same epochs on the whole pool. Every arm is followed by the same fine-tuning."""

    teacher: str = "split"  # "split": a zoo-resnet-recipe teacher trained on the pre-training pool only
    student_arch: str = "zoo-arch:resnet?widths=[8,16,32]"
    pretrain_data: str = "fmnist"
    pretrain_classes: str | None = "0-4"
    pool_per_class: int | None = None  # cap of the "100%" pool (quick runs)
    fraction: float = 0.1
    downstream: tuple[str, ...] = ("fmnist[5-9]", "digits")
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_recipe: Recipe = field(default_factory=lambda: Recipe(epochs=10, lr=0.02, weight_decay=5e-4,
                                                                   batch_size=128))
    finetune_recipe: Recipe = field(default_factory=lambda: Recipe(epochs=15, lr=0.05, weight_decay=5e-4,
                                                                   batch_size=32))
    finetune_per_class: int = 20
    test_per_class: int | None = None
    teacher_epochs: int | None = None  # override the split teacher's recipe (quick runs)
    objective: ObjectiveConfig = ObjectiveConfig(cache_alignment=False)

    def quick(self) -> BenchmarkConfig:
        """A seconds-long smoke version (one seed, one epoch, tiny pools)."""
        return replace(self, seeds=self.seeds[:1], pool_per_class=60, finetune_per_class=10, test_per_class=20,
                       teacher_epochs=1, pretrain_recipe=replace(self.pretrain_recipe, epochs=1, batch_size=16),
                       finetune_recipe=replace(self.finetune_recipe, epochs=1, batch_size=16))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkConfig:
        return cls(**{**d, "downstream": tuple(d["downstream"]), "seeds": tuple(d["seeds"]),
                      "pretrain_recipe": Recipe.from_dict(d["pretrain_recipe"]),
                      "finetune_recipe": Recipe.from_dict(d["finetune_recipe"]),
                      "objective": ObjectiveConfig(**d["objective"])})


# How KDEP loads data: the official train split whole, folder images as 28x28 greyscale (the zoo's input).
KDEP_IMAGES: dict[str, Any] = {"val_fraction": 0.0, "image_size": 28, "channels": 1}


def _capped(dataset: ImageDataset, per_class: int | None, seed: int) -> ImageDataset:
    """A stratified ``per_class`` subset (all samples of classes that have fewer)."""
    if per_class is None:
        return dataset
    counts = dataset.class_counts()
    if per_class >= int(counts.min()):
        return dataset
    idx = stratified_indices(dataset.labels, per_class=per_class, seed=seed)
    return dataset.subset(idx, f"per_class={per_class},seed={seed}")


def load_task(spec: str, seed: int, train_per_class: int | None, test_per_class: int | None = None,
              data_dir: str | None = None) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of a downstream task's data spec (e.g. ``fmnist[5-9]``, ``digits``, ``folder:/data/pets``);
    train capped at ``train_per_class`` (seeded)."""
    train = load_split(spec, "train", data_dir=data_dir, **KDEP_IMAGES)
    test = load_split(spec, "test", data_dir=data_dir, **KDEP_IMAGES)
    return _capped(train, train_per_class, seed), _capped(test, test_per_class, 0)


def split_teacher(pool: ImageDataset, device: torch.device, epochs: int | None = None,
                  test: ImageDataset | None = None) -> tuple[Classifier, dict[str, Any]]:
    """A teacher with the zoo's ResNet architecture and recipe trained on ``pool`` only (so it has never
    seen the downstream classes); cached in ``$GKT_HOME/kdep/teachers``."""
    entry = get_entry("resnet")
    recipe = entry.recipe if epochs is None else replace(entry.recipe, epochs=epochs)
    arch = entry.arch_spec(pool.num_classes)
    key = stable_hash([arch.to_dict(), entry.preprocess().to_dict(), recipe.to_dict(), dataset_identity(pool)])
    path = cache_home() / "kdep" / "teachers" / f"resnet-split-{key}.safetensors"
    teacher = load_cached(path, "kdep_split_teacher")  # None when missing or damaged (then trained again)
    if teacher is not None:
        return teacher.eval(), dict(teacher.provenance)
    torch.manual_seed(recipe.seed)
    teacher = Classifier.create(arch, entry.preprocess(), pool.class_names, name="teacher:resnet-split")
    start = time.perf_counter()
    train_supervised(teacher, pool, recipe, device, desc="split teacher")
    teacher.provenance = {"kdep_split_teacher": True, "recipe": recipe.to_dict(), "train_data": pool.name,
                          "train_seconds": round(time.perf_counter() - start, 1),
                          "test_acc": evaluate(teacher, test, device) if test is not None else None}
    save_checkpoint(teacher.cpu(), path)
    return teacher.eval(), dict(teacher.provenance)


@dataclass
class BenchmarkResult:
    rows: list[dict[str, Any]]  # one per (method, seed, task)
    summary: list[dict[str, Any]]  # one per method
    teacher: dict[str, Any]


def summarize(rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Per method: mean ± std over seeds of each task's accuracy and of the task mean, mean pre-training
    time. Methods keep their first-seen order."""
    summary = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        seeds = sorted({r["seed"] for r in mine})
        entry: dict[str, Any] = {"method": method, "pretrain_samples": mine[0]["pretrain_samples"],
                                 "pretrain_s": round(statistics.fmean(r["pretrain_s"] for r in mine), 1)}
        for task in tasks:
            entry[task] = format_mean_std([r["acc"] for r in mine if r["task"] == task], scale=100)
        per_seed = [sum(r["acc"] for r in mine if r["seed"] == seed) / len(tasks) for seed in seeds]
        m, s = mean_std(per_seed)
        entry.update(mean=format_mean_std(per_seed, scale=100), mean_acc=m, mean_std=s, seeds=len(seeds))
        summary.append(entry)
    return summary


def _pretrain_data(cfg: BenchmarkConfig) -> DataSpec:
    return DataSpec.parse(cfg.pretrain_data).with_classes(cfg.pretrain_classes)


def _pool(cfg: BenchmarkConfig, data_dir: str | None) -> ImageDataset:
    return _capped(load_split(_pretrain_data(cfg), "train", data_dir=data_dir, **KDEP_IMAGES), cfg.pool_per_class, 0)


def _teacher(cfg: BenchmarkConfig, pool: ImageDataset, device: torch.device, data_dir: str | None
             ) -> tuple[Classifier, dict[str, Any]]:
    """The teacher of the benchmark (the split teacher is trained once and cached)."""
    if cfg.teacher == "split":
        test = _capped(load_split(_pretrain_data(cfg), "test", data_dir=data_dir, **KDEP_IMAGES),
                       cfg.test_per_class, 0)
        teacher, info = split_teacher(pool, device, cfg.teacher_epochs, test)
        return teacher, {"spec": "split (zoo resnet recipe on the pre-training pool)", **info}
    teacher = load_teacher(cfg.teacher, pool)
    return teacher, {"spec": cfg.teacher, **{k: teacher.provenance.get(k) for k in ("train_data", "test_acc")}}


def benchmark_job(config: dict[str, Any]) -> dict[str, Any]:
    """One grid job of the benchmark: pre-train a student with one method and seed, fine-tune it on every
    downstream task; ``config`` holds ``benchmark`` (a :class:`BenchmarkConfig` dict), ``objective``,
    ``fraction``, ``seed``, ``data_dir`` and ``device``. Returns one row per task."""
    cfg, seed, device = BenchmarkConfig.from_dict(config["benchmark"]), config["seed"], torch.device(config["device"])
    method, data_dir = Method(config["objective"], config["fraction"]), config["data_dir"]
    make_optimizer([nn.Parameter(torch.zeros(1))], "sgd", 0.1, 0.0)  # first use imports torch._dynamo (~s): not timed
    pool = _pool(cfg, data_dir)
    teacher = _teacher(cfg, pool, device, data_dir)[0] if method.objective and OBJECTIVES[
        method.objective].needs_teacher else None
    data = stratified_subset_or_all(pool, method.fraction, seed)
    names = teacher.class_names if method.objective == "logit-kd" else pool.class_names
    student = build_student(cfg.student_arch, pool, names, seed=seed)
    seconds = 0.0
    if method.objective is not None:
        result = pretrain(student, data, method.objective, replace(cfg.pretrain_recipe, seed=seed), device,
                          teacher=teacher, cfg=cfg.objective, desc=f"{method.name} s{seed}")
        seconds = result.seconds
    rows = []
    for spec in cfg.downstream:
        train, test = load_task(spec, seed, cfg.finetune_per_class, cfg.test_per_class, data_dir)
        _, acc = finetune(student, train, test, replace(cfg.finetune_recipe, seed=seed), device, desc=f"finetune {spec}")
        rows.append({"method": method.name, "seed": seed, "task": spec, "acc": acc, "pretrain_s": round(seconds, 2),
                     "pretrain_samples": len(data) if method.objective else 0, "finetune_train": len(train),
                     "test": len(test)})
    return {"rows": rows}


def benchmark_jobs(cfg: BenchmarkConfig, device: torch.device, data_dir: str | None = None,
                   methods: Sequence[Method] | None = None) -> list[dict[str, Any]]:
    """The benchmark's grid: seeds × methods (a job's key does not depend on the other seeds)."""
    methods = list(methods or default_methods(cfg.fraction))
    base = {"benchmark": {**cfg.to_dict(), "seeds": []}, "data_dir": data_dir, "device": str(device)}
    return [{**base, "objective": m.objective, "fraction": m.fraction, "seed": seed}
            for seed in cfg.seeds for m in methods]


def run_benchmark(cfg: BenchmarkConfig, device: torch.device, data_dir: str | None = None,
                  methods: Sequence[Method] | None = None, progress: Callable[[str], None] = log.info,
                  store: ResultsStore | None = None, backend: LocalBackend | RayBackend | None = None
                  ) -> BenchmarkResult:
    """Pre-train one student per (method, seed), fine-tune each on every downstream task, measure: the grid
    of :func:`benchmark_jobs` run by :func:`run_study` into ``store`` (default: a temporary one; a store
    that holds finished jobs resumes the benchmark)."""
    methods = list(methods or default_methods(cfg.fraction))
    pool = _pool(cfg, data_dir)
    teacher_info: dict[str, Any] = {}
    if any(m.objective and OBJECTIVES[m.objective].needs_teacher for m in methods):
        teacher_info = _teacher(cfg, pool, device, data_dir)[1]  # trained (and cached) once, before the jobs
    jobs = benchmark_jobs(cfg, device, data_dir, methods)

    def report(config: dict[str, Any], metrics: dict[str, Any], status: str) -> None:
        for row in metrics.get("rows", []):
            progress(f"seed {row['seed']} {row['method']:>20} {row['task']:>12}: acc {100 * row['acc']:.2f}% "
                     f"(pre-training {row['pretrain_s']:.1f}s)")

    with tempfile.TemporaryDirectory(prefix="gkt-kdep-") as tmp:
        store = store or ResultsStore(Path(tmp) / STORE_NAME)
        counts = run_study(benchmark_job, jobs, store, backend or LocalBackend(1, torch.get_num_threads()),
                           desc="kdep benchmark", on_result=report)
        if not counts.ok:
            failure = failed_rows(store, counts.failed + counts.not_retried)[0]
            raise GktError(f"{counts.describe('benchmark jobs')}; first failure: {failure.metrics.get('error')} "
                           f"(results store: {store.path})")
        by_key = {r.key: r.metrics["rows"] for r in store.rows()}
    rows = [row for job in jobs for row in by_key[job_key(job)]]
    return BenchmarkResult(rows, summarize(rows, cfg.downstream), teacher_info)


def stratified_subset_or_all(pool: ImageDataset, fraction: float, seed: int) -> ImageDataset:
    return pool if fraction >= 1 or fraction <= 0 else stratified_subset(pool, fraction=fraction, seed=seed)
