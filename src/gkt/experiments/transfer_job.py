"""One transfer study job: load, transfer, evaluate, return scalar metrics."""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gkt.core.config import GRID_KEYS
from gkt.core.errors import GktError
from gkt.core.runtime import resolve_device, seed_everything
from gkt.data.datasets import ImageDataset
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.models import Classifier, DataInfo, load_model
from gkt.transfer.mutual import MUTUAL_METHODS

JobConfig = dict[str, Any]


@functools.lru_cache(maxsize=4)
def _test_set(data: str, data_dir: str | None) -> ImageDataset:
    return load_split(data, "test", data_dir=data_dir)


@functools.lru_cache(maxsize=4)
def _transfer_set(data: str, data_dir: str | None, fraction: float, subset_seed: int) -> ImageDataset:
    train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
    return stratified_subset(train, fraction=fraction, seed=subset_seed)


@functools.lru_cache(maxsize=32)
def _study_model(spec: str, data: str, data_dir: str | None, zoo_dir: str | None, class_map: str | None) -> Classifier:
    """``spec`` aligned to the data's classes (``class_map``: the map as JSON text, or None to match names)."""
    mapping = json.loads(class_map) if class_map else "auto"
    return load_model(spec, DataInfo.from_dataset(_test_set(data, data_dir)), zoo_dir, class_map=mapping)


def data_identity(jobs: Sequence[JobConfig]) -> dict[str, str]:
    """The content identity of every data set the jobs read (train and test split), keyed by spec and data
    directory: a study resumed on other data would mix results of two data sets."""
    from gkt.core.hashing import stable_hash
    from gkt.engine.predictions import dataset_identity

    sources = dict.fromkeys((job.get("data", "fmnist"), job.get("data_dir")) for job in jobs)
    return {f"{data} ({data_dir or 'default data directory'})": stable_hash(
        [dataset_identity(load_split(data, "train", data_dir=data_dir, val_fraction=0)),
         dataset_identity(load_split(data, "test", data_dir=data_dir))]) for data, data_dir in sources}


def model_identities(jobs: Sequence[JobConfig]) -> dict[str, str]:
    """The identity (weights, architecture, preprocessing, classes) of every model the jobs name, keyed by
    spec and zoo directory: a study resumed after a spec came to name other weights would mix two models."""
    out = {}
    for job in jobs:
        data, data_dir, zoo_dir = job.get("data", "fmnist"), job.get("data_dir"), job.get("zoo_dir")
        class_map = json.dumps(job["class_map"], sort_keys=True) if job.get("class_map") else None
        for spec in (job["student"], job["teacher"]):
            key = f"{spec} ({zoo_dir or 'default zoo'})"
            if key not in out:
                try:
                    out[key] = _study_model.__wrapped__(spec, data, data_dir, zoo_dir, class_map).identity()
                except GktError:  # its jobs fail on it, and say why (then --retry-failed)
                    out[key] = None
    return {key: identity for key, identity in out.items() if identity is not None}


def _scalar_metrics(final: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in final.items() if isinstance(v, (int, float, str, bool)) or v is None}
    for k, v in (final.get("partition_quality") or {}).items():
        flat[f"partition_{k}"] = v
    return flat


def transfer_job(config: JobConfig) -> dict[str, Any]:
    """One transfer run of a study: ``config`` holds student, teacher, method, method_args, seed, epochs,
    lr, fraction, data (+ data_dir, zoo_dir, subset_seed, device, precision). The transfer set is drawn with ``subset_seed``,
    by default the run's seed (as ``gkt transfer`` does), so seeds vary the subset as well as the order and
    the seeds' spread covers both; every method of a seed sees the same subset. The global RNGs (dropout)
    are seeded with the run's seed, so a run's result does not depend on the worker or the jobs before
    it. Models and data are cached per process; every run gets fresh copies, so runs never share state.
    Only the final model is evaluated (a study keeps final metrics, not per-epoch curves)."""
    from gkt.engine.loop import Runtime
    from gkt.transfer import TRANSFER_FRACTION, TransferConfig, decoded_for, run_transfer

    data, data_dir, zoo_dir = config.get("data", "fmnist"), config.get("data_dir"), config.get("zoo_dir")
    subset_seed = config.get("subset_seed", config.get("seed", 0))
    transfer_set = _transfer_set(data, data_dir, config.get("fraction", TRANSFER_FRACTION), subset_seed)
    test_set = _test_set(data, data_dir)
    class_map = json.dumps(config["class_map"], sort_keys=True) if config.get("class_map") else None
    student = _study_model(config["student"], data, data_dir, zoo_dir, class_map).clone().requires_grad_(True)
    teacher = _study_model(config["teacher"], data, data_dir, zoo_dir, class_map).clone()
    transfer_set, test_set = decoded_for([student, teacher], transfer_set, test_set)
    settings = {k: config[k] for k in ("method", "method_args", "seed", "augment_epochs", *GRID_KEYS) if k in config}
    if "augment" in config:  # a list in the job's JSON
        settings["augment"] = tuple(config["augment"])
    seed_everything(config.get("seed", 0))  # after loading (a first load draws random initial weights)
    if config["method"] in MUTUAL_METHODS:
        return _mutual_job(student, teacher, transfer_set, test_set, config, settings)
    outcome = run_transfer(student, teacher, transfer_set, test_set, TransferConfig(**settings),
                           resolve_device(config.get("device", "auto")),
                           runtime=Runtime(precision=config.get("precision", "fp32"), evaluate_every_epoch=False))
    return {**_scalar_metrics(outcome.final), "test_samples": len(test_set), "student_params": student.num_parameters(),
            "student_family": student.provenance.get("family", student.arch.name),
            "teacher_family": teacher.provenance.get("family", teacher.arch.name)}


def _mutual_job(student: Classifier, teacher: Classifier, transfer_set: ImageDataset, test_set: ImageDataset,
                config: JobConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """A study's ``mutual`` / ``mutual-unsup`` job: student and teacher learn from each other at once
    (:mod:`gkt.transfer.mutual`); the student's metrics as a transfer's, the teacher's change beside them."""
    from gkt.engine.loop import Runtime
    from gkt.transfer import TransferConfig
    from gkt.transfer.mutual import MutualConfig, run_mutual

    defaults = TransferConfig()
    mutual = MutualConfig(epochs=settings.get("epochs", defaults.epochs), lr=settings.get("lr", MutualConfig.lr),
                          batch_size=settings.get("batch_size", defaults.batch_size),
                          temperature=settings.get("temperature", defaults.temperature),
                          unlabelled=MUTUAL_METHODS[config["method"]], seed=config.get("seed", 0),
                          augment=tuple(settings.get("augment", ())),
                          **{k: (float(v) if k == "ce" else str(v)) for k, v in settings.get("method_args", {}).items()
                             if k in ("rule", "ce")})
    outcome = run_mutual([student, teacher], transfer_set, test_set, mutual,
                         resolve_device(config.get("device", "auto")),
                         Runtime(precision=config.get("precision", "fp32"), evaluate_every_epoch=False))
    mine, theirs = outcome.rows
    return {"status": "ok", "student": student.name, "teacher": teacher.name, "method": config["method"],
            "acc_teacher": theirs["acc_before"], "acc_student_before": mine["acc_before"], "acc": mine["acc"],
            "delta_transf": mine["delta_transf"], "knowledge_gain": mine["knowledge_gain"],
            "knowledge_loss": mine["knowledge_loss"], "teacher_delta_transf": theirs["delta_transf"],
            "seconds": round(outcome.seconds, 1), "test_samples": len(test_set),
            "student_params": student.num_parameters(),
            "student_family": student.provenance.get("family", student.arch.name),
            "teacher_family": teacher.provenance.get("family", teacher.arch.name)}


def check_settings(axes: dict[str, Sequence[Any]]) -> None:
    """Refuse, before any job runs, a grid value that does not fit its transfer setting (``lr=abc``)."""
    from gkt.transfer import TransferConfig

    hints = typing.get_type_hints(TransferConfig)
    for key, values in axes.items():
        for value in values:
            try:
                TypeAdapter(hints[key]).validate_python(value, strict=True)
                TransferConfig(**{key: value}).build_method()
            except (ValidationError, GktError, ValueError, TypeError) as exc:
                expected = getattr(hints[key], "__name__", str(hints[key]))
                raise GktError(f"--grid {key}={value!r}: {key} takes a {expected}; give values like "
                               f"{key}={getattr(TransferConfig(), key)!r},...") from exc
