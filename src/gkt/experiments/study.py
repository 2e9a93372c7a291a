"""``gkt study`` as a Python call: :func:`study` runs a grid of transfers (students × teachers × methods ×
seeds × settings) through the one grid runner into one results store and writes the same run directory
(``jobs.json``, ``results.sqlite``, the tables, findings and figures); the CLI parses, calls it and prints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gkt.core.config import GRID_KEYS
from gkt.core.errors import GktError
from gkt.core.io import new_run_dir, read_json, write_json
from gkt.core.runtime import resolve_device
from gkt.engine.loop import Runtime
from gkt.experiments.grid import (
    STORE_NAME,
    LocalBackend,
    RayBackend,
    ResultRow,
    ResultsStore,
    StudyCounts,
    expand_grid,
    failed_rows,
    job_key,
    local_backend,
    run_study,
)
from gkt.experiments.inputs import input_options
from gkt.experiments.transfer_job import check_settings, data_identity, model_identities, transfer_job
from gkt.experiments.zoo import expand_zoo
from gkt.reporting.study import write_study_outputs
from gkt.transfer import TRANSFER_FRACTION, TransferConfig


@dataclass(frozen=True)
class StudyConfig:
    """The defaults of a study's job options (``gkt study``'s and :func:`study`'s); epochs, lr and batch size
    left out are the transfer's own defaults."""

    methods: tuple[str, ...] = ("kl", "kl-dp")
    seeds: tuple[int, ...] = (0,)
    data: str = "fmnist"
    fraction: float = TRANSFER_FRACTION
    precision: str = Runtime.precision
    recipe: str = TransferConfig.recipe
    augment_epochs: int = TransferConfig.augment_epochs


# What a study's options decide about its jobs: with resume, the study's own jobs run, so these are refused.
JOB_OPTIONS = ("students", "teachers", "methods", "seeds", "epochs", "lr", "grid", "method_arg", "data", "fraction",
               "class_map", "batch_size", "precision", "data_dir", "recipe", "augment", "augment_epochs")
STORE_POINTER = "store.json"  # in a resumed study's run directory: where its results store is

# What every job of a study's jobs.json holds (study_jobs writes them), with its type.
JOB_KEYS: dict[str, type | tuple[type, ...]] = {"student": str, "teacher": str, "method": str, "seed": int,
                                                "data": str}

MethodArgs = Sequence[str] | Mapping[str, Mapping[str, Any]]
Grid = Sequence[str] | Mapping[str, Sequence[Any]]


@dataclass
class StudyResult:
    """What ``gkt study`` did: ``counts`` of its jobs, the ``failed`` ones, and the success table (``table``:
    ``success_table.csv``, empty without finished jobs) written in ``run_dir`` next to ``runs.csv``,
    ``pairs.csv``, ``findings.json``, ``summary.md`` and the figures; the results are in ``store_path``."""

    run_dir: Path
    store_path: Path
    store: ResultsStore
    counts: StudyCounts
    failed: list[ResultRow]
    table: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    seconds: float


def parse_method_args(items: MethodArgs, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--method-arg METHOD:K=V`` items (or a mapping ``{method: {k: v}}``) per method of ``methods``."""
    parsed: dict[str, dict[str, Any]] = {m: {} for m in methods}
    if isinstance(items, Mapping):
        items = [f"{m}:{k}={v}" for m, values in items.items() for k, v in values.items()]
    for item in items:
        method, sep, kv = item.partition(":")
        key, sep2, value = kv.partition("=")
        if not (sep and sep2) or method not in parsed:
            raise GktError(f"--method-arg expects METHOD:K=V with METHOD among {list(methods)}, got {item!r}")
        parsed[method][key.replace("-", "_")] = value
    return parsed


def _values(text: str) -> list[Any]:
    out = []
    for item in text.split(","):
        try:
            out.append(json.loads(item))
        except json.JSONDecodeError:
            out.append(item)
    return out


def parse_grid(grid: Grid) -> dict[str, list[Any]]:
    """``--grid KEY=V1,V2`` items (or a mapping ``{key: [values]}``) as grid axes over job settings."""
    items = [(k, list(v), k) for k, v in grid.items()] if isinstance(grid, Mapping) else \
        [(key, _values(values) if sep else [], item if sep else "") for item in grid
         for key, sep, values in [item.partition("=")]]
    axes = {}
    for key, values, item in items:
        if not item or key not in GRID_KEYS:
            raise GktError(f"--grid expects KEY=V1,V2 with KEY in {', '.join(GRID_KEYS)}; got {item or key!r}")
        axes[key] = values
    return axes


def study_jobs(students: Sequence[str], teachers: Sequence[str] | None = None, *,
               methods: Sequence[str] = StudyConfig.methods, seeds: Sequence[int] = StudyConfig.seeds,
               epochs: int | None = None, lr: float | None = None, grid: Grid = (), method_arg: MethodArgs = (),
               data: str = StudyConfig.data, fraction: float = StudyConfig.fraction,
               class_map: str | Path | dict[str, Any] | None = None, batch_size: int | None = None,
               precision: str = StudyConfig.precision, device: str = "auto", data_dir: str | None = None,
               zoo_dir: str | None = None, recipe: str = StudyConfig.recipe, augment: Sequence[str] | None = None,
               augment_epochs: int = StudyConfig.augment_epochs) -> list[dict[str, Any]]:
    """The jobs of a study: every ordered (student, teacher) pair of different models × methods × seeds × the
    ``grid`` axes; settings at their defaults stay out of the jobs (so their keys match older stores)."""
    students = expand_zoo(students or [], zoo_dir, "--students")
    teachers = expand_zoo(teachers, zoo_dir, "--teachers") if teachers else students
    if not students or not teachers:
        raise GktError("a study needs --students (and optionally --teachers)")
    per_method = parse_method_args(method_arg, methods)
    base: dict[str, Any] = {"data": data, "fraction": fraction, "data_dir": data_dir, "zoo_dir": zoo_dir}
    base |= {k: v for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)) if v is not None}
    base |= {k: v for k, v, default in (("device", device, "auto"), ("precision", precision, StudyConfig.precision),
                                        ("recipe", recipe, StudyConfig.recipe),
                                        ("augment_epochs", augment_epochs, StudyConfig.augment_epochs)) if v != default}
    TransferConfig(augment=None if augment is None else tuple(augment), augment_epochs=augment_epochs,
                   recipe=recipe).build_method()  # bad augmentation options fail before any job runs
    if augment is not None:  # given (none: no augmentation); left out, the recipe's
        base["augment"] = list(augment)
    if class_map:  # its contents, so the jobs' keys follow the map, not its path
        from gkt.models.class_map import read_class_map

        base["class_map"] = class_map if isinstance(class_map, dict) else read_class_map(class_map)
    axes: dict[str, list[Any]] = {"student": students, "teacher": teachers, "method": list(methods),
                                  "seed": list(seeds), **parse_grid(grid)}
    check_settings({**{k: [v] for k, v in base.items() if k in GRID_KEYS}, **{k: v for k, v in axes.items()
                                                                             if k in GRID_KEYS}})
    jobs = expand_grid(base, axes, skip=lambda j: j["student"] == j["teacher"])
    for job in jobs:
        job["method_args"] = per_method[job["method"]]
    return jobs


def make_backend(backend: str, workers: int, threads: int | None, device: torch.device,
                 ray_address: str | None = None, ray_gpus_per_job: float = 1.0) -> LocalBackend | RayBackend:
    """The backend of ``--backend``: on CUDA, local workers spread over the visible GPUs (one each) and Ray tasks
    ask for GPUs. A device with an index (``cuda:1``) keeps every worker on that device."""
    if backend == "ray":
        return RayBackend(ray_address, threads=threads or 1, device_type=device.type, num_gpus_per_job=ray_gpus_per_job)
    if backend != "local":
        raise GktError(f"--backend must be local or ray, got {backend!r}")
    return local_backend(workers, threads, device)


def resumed_study(old: Path, given: Sequence[str] = ()) -> tuple[list[dict[str, Any]], Path]:
    """The jobs and results store of the study in ``old`` (a study's run directory, or one that resumed it);
    ``given`` job options (names of :data:`JOB_OPTIONS`) are refused: the study's own jobs are what a resume runs."""
    if given:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in JOB_OPTIONS if key in given)
        raise GktError(f"--resume {old} runs that study's own jobs, but you gave {flags}; drop them, or start a new "
                       "study for other jobs")
    try:
        pointer = old / STORE_POINTER
        store_path = Path(read_json(pointer)["store"]) if pointer.is_file() else old / STORE_NAME
        jobs = read_json(old / "jobs.json") if (old / "jobs.json").is_file() else None
    except (ValueError, KeyError, TypeError) as exc:
        raise GktError(f"{old}: its jobs.json or {STORE_POINTER} is damaged ({type(exc).__name__}); start a new "
                       "study instead of --resume") from None
    if jobs is None or not store_path.is_file():
        raise GktError(f"{old}: no {STORE_NAME} and jobs.json to resume (is it a study's run directory?)")
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise GktError(f"{old}: its jobs.json is damaged (not a list of jobs); start a new study instead of --resume")
    for i, job in enumerate(jobs):
        wrong = [key for key, kind in JOB_KEYS.items() if not isinstance(job.get(key), kind)
                 or isinstance(job.get(key), bool)]
        if wrong:
            raise GktError(f"{old / 'jobs.json'}: job {i + 1} of {len(jobs)} lacks a valid "
                           f"{', '.join(wrong)}; the file is damaged: restore it, or start a new study "
                           "instead of --resume")
    return jobs, store_path


def _check_resumed_inputs(old: Path, data: dict[str, str], models: dict[str, str]) -> None:
    """A resumed study's data and models are the ones its finished jobs describe."""
    if (old / "data.json").is_file() and read_json(old / "data.json") != data:
        raise GktError(f"{old}: the data changed since this study ran ({', '.join(data)}): its finished jobs "
                       "describe the old data; start a new study instead of --resume")
    if (old / "models.json").is_file():
        before = read_json(old / "models.json")
        changed = [spec for spec, identity in models.items() if before.get(spec, identity) != identity]
        if changed:
            raise GktError(f"{old}: {', '.join(changed)} name other models than when this study ran (other "
                           "weights, preprocessing or classes): its finished jobs describe the old ones; start a "
                           "new study instead of --resume")


def study(students: Sequence[str] | None = None, teachers: Sequence[str] | None = None, *,
          methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, epochs: int | None = None,
          lr: float | None = None, grid: Grid | None = None, method_arg: MethodArgs | None = None,
          data: str | None = None, fraction: float | None = None, class_map: str | Path | dict[str, Any] | None = None,
          batch_size: int | None = None, precision: str | None = None, recipe: str | None = None,
          augment: Sequence[str] | None = None, augment_epochs: int | None = None,
          backend: str = "local", workers: int = 1,
          ray_address: str | None = None, ray_gpus_per_job: float = 1.0, resume: str | Path | None = None,
          retry_failed: bool = False, data_dir: str | None = None, zoo_dir: str | None = None,
          device: str = "auto", threads: int | None = None, bad_images: str | None = None,
          img_size: int | None = None, out: str | Path = "runs", run_dir: str | Path | None = None,
          on_result: Callable[[dict[str, Any], dict[str, Any], str], None] | None = None) -> StudyResult:
    """A grid of transfers, as ``gkt study`` runs it: every job a transfer of the one grid runner, its result in
    the study's results store (a finished job is never run twice), then the tables, findings and figures.

    ``students``: student specs (``zoo`` = every built zoo model). ``teachers``: teacher specs (default: the
    students; every ordered pair of different models). ``methods``: transfer methods (default ``kl``, ``kl-dp``).
    ``seeds``: seeds (default 0). ``epochs``, ``lr``, ``batch_size``: transfer settings (default: the transfer's).
    ``grid``: extra axes over job settings (lr, epochs, temperature, batch_size, student_mode, recipe): ``["lr=0.01,0.1"]``
    or ``{"lr": [0.01, 0.1]}``. ``method_arg``: method hyperparameters, ``["xekl-mcl:tau=0.99"]`` or
    ``{"xekl-mcl": {"tau": 0.99}}``. ``data``: the data spec (default ``fmnist``). ``fraction``: the stratified
    share of train used as transfer set. ``class_map``: a JSON/YAML file or dict aligning every model to the
    data's classes (default: match class names). ``precision``: autocast precision of every job (``auto``,
    ``fp32``, ``bf16``, ``fp16``). ``recipe``: the transfer recipe of every job (``gkt`` or ``paper``: defaults
    for lr and augmentation; ``grid={"recipe": ["gkt", "paper"]}`` runs both). ``augment``: the augmentations
    of every job (``photo``: random-resized crops drawn while decoding photos, the frozen models' outputs on
    each epoch's crops stored once and read by every job with the same teacher, data and seed; batch ones
    ``flip``, ``crop``, ``erase``, ``paper``); ``augment_epochs``: with ``photo``, N sets of crops reused
    cyclically. These job options are left out (None) with ``resume``.
    ``backend``: ``local`` (``workers`` processes; on CUDA spread over the visible GPUs) or ``ray``
    (``ray_address``: the cluster, default a local Ray; ``ray_gpus_per_job``: GPUs each job asks for on CUDA).
    ``resume``: a study's run directory whose results store and jobs to continue (its tables are written there
    again unless ``run_dir`` says otherwise); ``retry_failed``: with
    ``resume``, run its failed jobs again. ``data_dir``: the Fashion-MNIST directory. ``zoo_dir``: where the
    embedded zoo is cached. ``device``: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ... ``threads``: torch threads
    per worker. ``bad_images``: ``fail`` or ``skip`` an undecodable image. ``img_size``: every library model's
    input size in px. ``out``: the root of run directories; ``run_dir``: the run directory itself (default: a new
    one under ``out``). ``on_result``: called with each job's config, metrics and status as it ends."""
    d = StudyConfig()
    options = {"students": students, "teachers": teachers, "methods": methods, "seeds": seeds, "epochs": epochs,
               "lr": lr, "grid": grid, "method_arg": method_arg, "data": data, "fraction": fraction,
               "class_map": class_map, "batch_size": batch_size, "precision": precision, "data_dir": data_dir,
               "recipe": recipe, "augment": augment, "augment_epochs": augment_epochs}
    if retry_failed and not resume:
        raise GktError("--retry-failed reruns the failed jobs of a study: give it with --resume RUN_DIR")
    torch_device = resolve_device(device)
    Runtime(precision=precision or d.precision).autocast_dtype(torch_device)  # e.g. fp16 on a CPU: refused here
    if resume:
        old = Path(resume)
        jobs, store_path = resumed_study(old, [k for k, v in options.items() if v is not None])
    else:
        jobs = study_jobs(students or [], teachers, methods=d.methods if methods is None else methods,
                          seeds=d.seeds if seeds is None else seeds, epochs=epochs, lr=lr, grid=grid or (),
                          method_arg=method_arg or (), data=data or d.data,
                          fraction=d.fraction if fraction is None else fraction, class_map=class_map,
                          batch_size=batch_size, precision=precision or d.precision, recipe=recipe or d.recipe,
                          augment=augment, augment_epochs=d.augment_epochs if augment_epochs is None else augment_epochs,
                          device=device,
                          data_dir=data_dir, zoo_dir=zoo_dir)
    start = time.perf_counter()
    with input_options(bad_images, img_size):  # the jobs' worker processes inherit both
        data_ids, models = data_identity(jobs), model_identities(jobs)
        if resume:
            _check_resumed_inputs(old, data_ids, models)
        # a resumed study goes on in its own folder: tables and figures are rewritten there
        run_dir = Path(run_dir) if run_dir is not None else Path(resume) if resume else new_run_dir(out, "study")
        store_path = store_path if resume else run_dir / STORE_NAME
        store = ResultsStore(store_path)
        runner = make_backend(backend, workers, threads, torch_device, ray_address, ray_gpus_per_job)
        write_json(run_dir / "jobs.json", jobs)
        write_json(run_dir / "data.json", data_ids)
        write_json(run_dir / "models.json", models)
        if store_path.parent != run_dir:  # a resumed study keeps its store where it is: say where
            write_json(run_dir / STORE_POINTER, {"store": str(store_path.resolve())})
        counts = run_study(transfer_job, jobs, store, runner, retry_failed=retry_failed, on_result=on_result)
    seconds = time.perf_counter() - start
    records = store.records(keys={job_key(j) for j in jobs})
    table = write_study_outputs(run_dir, records) if records else []
    return StudyResult(run_dir, store_path, store, counts, failed_rows(store, counts.failed + counts.not_retried),
                       table, jobs, seconds)
