"""``gkt transfer`` as a Python call: :func:`transfer` takes the CLI's options as keyword arguments and
writes the same run directory (``resolved_config.json``, ``metrics.csv``, ``final.json``, ``plot.png``, the
transferred student); the CLI parses, calls it and prints. One teacher here; several go through
:mod:`gkt.experiments.multi_teacher`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError
from gkt.core.io import new_run_dir, write_json
from gkt.core.runtime import resolve_device, seed_everything, set_threads
from gkt.data.subsets import stratified_subset
from gkt.engine.distributed import DistContext
from gkt.engine.loop import Runtime
from gkt.experiments.inputs import class_map_of, input_options, load_data
from gkt.experiments.multi_run import JobCallback, MultiTransferOutcome, multi_transfer
from gkt.models import DataInfo, load_model
from gkt.reporting.transfer import plot_history
from gkt.transfer import (
    TRANSFER_FRACTION,
    TransferConfig,
    TransferOutcome,
    decoded_for,
    load_state,
    run_transfer,
)

_D = TransferConfig()


def parse_method_arg(items: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``--method-arg K=V`` items (or a mapping ``{k: v}``) as a method's keyword arguments."""
    if isinstance(items, Mapping):
        return {str(k).replace("-", "_"): v for k, v in items.items()}
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GktError(f"--method-arg expects K=V, got {item!r}")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def transfer(student: str, teacher: str | Sequence[str], *, data: str = "fmnist", method: str = _D.method,
             method_arg: Sequence[str] | Mapping[str, Any] = (), fraction: float = TRANSFER_FRACTION,
             epochs: int = _D.epochs, lr: float | None = None, batch_size: int = _D.batch_size,
             temperature: float = _D.temperature, weight_decay: float = _D.weight_decay,
             augment: tuple[str, ...] | list[str] | None = None, augment_epochs: int = _D.augment_epochs,
             recipe: str = _D.recipe, unlabelled: bool = False, student_mode: str = _D.student_mode,
             class_map: str | Path | dict[str, Any] | None = None, seed: int = 0, data_dir: str | None = None,
             zoo_dir: str | None = None, device: str | torch.device = "auto", threads: int | None = None,
             precision: str = Runtime.precision, no_cache: bool = False, channels_last: bool = False, compile: bool = False,
             loader_workers: int | None = None, bad_images: str | None = None, img_size: int | None = None,
             out: str | Path = "runs", run_dir: str | Path | None = None,
             resume: str | Path | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
             dist: DistContext | None = None, say: Callable[[str], None] = print,
             multi: Sequence[str] | str | None = None, seeds: Sequence[int] | None = None, order: str = "given",
             on_job: JobCallback | None = None) -> TransferOutcome | MultiTransferOutcome:
    """Transfer ``teacher`` into ``student`` on a stratified ``fraction`` of ``data``'s train split and measure
    it on the test split, as ``gkt transfer`` does with the same options; returns the outcome, whose ``final``
    is ``RUN_DIR/final.json`` and ``history`` ``RUN_DIR/metrics.csv``. Also called as ``gkt.transfer(...)``.

    ``student``, ``teacher``: model specs (``zoo:NAME``, ``timm:...``, ``hf:...``, ``torchvision:...``,
    ``file:PATH``). ``data``: the data spec (as :func:`gkt.load_data`). ``method``: the transfer method (the
    README's Methods); ``method_arg``: its hyperparameters, ``["lam=0.7"]`` or ``{"lam": 0.7}``.
    ``fraction``: the stratified share of train used as transfer set, drawn with ``seed``. ``epochs``, ``lr``,
    ``batch_size``, ``temperature``, ``weight_decay``: the training (SGD); ``lr`` and ``augment`` left as None
    take the ``recipe``'s (``gkt`` or ``paper``, :mod:`gkt.transfer.recipes`). ``augment``: augmentations seen
    by every model in its own view (``photo``: a random-resized crop and flip drawn while decoding photos, the
    frozen models' outputs stored per epoch; batch ones: ``flip``, ``crop``, ``erase``, ``paper``).
    ``augment_epochs``: with ``photo``, how many epochs of crops (epoch e reuses e mod N; 0: new every epoch). ``unlabelled``: no labels on the transfer set (label-free methods only).
    ``student_mode``: ``train`` (dropout and BatchNorm statistics as in fine-tuning) or ``eval`` (frozen).
    ``class_map``: a JSON/YAML file or dict ``{data_class: model_class_or_list}`` aligning both models to the
    data's classes (default: match class names). ``seed``: the seed of everything random.
    ``data_dir``: the Fashion-MNIST directory. ``zoo_dir``: where the embedded zoo is cached. ``device``:
    ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ... ``threads``: torch's CPU threads for this process (None:
    torch's default). ``precision``: autocast precision (``auto``, ``fp32``, ``bf16``,
    ``fp16``). ``no_cache``: compute the frozen models' outputs every step. ``channels_last``, ``compile``,
    ``loader_workers``: speed only (NHWC, ``torch.compile``, image-decoding processes). ``bad_images``:
    ``fail`` or ``skip`` an undecodable image. ``img_size``: every library model's input size in px.
    ``out``: the root of run directories; ``run_dir``: the run directory itself (default: a new one under
    ``out``). ``resume``: an interrupted run's directory to continue from its last finished epoch (give its
    options). ``on_epoch``: called with each epoch's metrics. ``dist``: the ``torchrun`` context (only rank 0
    writes). ``say``: where the progress line goes.

    Several teachers (a list) with ``multi`` (``sequential``, ``parallel``, ``soup`` or ``all``; ``seeds``,
    ``order``, ``on_job``) run the multi-teacher study of ``gkt transfer --multi`` and return its
    :class:`~gkt.experiments.multi_run.MultiTransferOutcome` (:func:`gkt.experiments.multi_run.multi_transfer`)."""
    config = TransferConfig(method=method, method_args=parse_method_arg(method_arg), epochs=epochs, lr=lr,
                            weight_decay=weight_decay, batch_size=batch_size, temperature=temperature,
                            augment=None if augment is None else tuple(augment), augment_epochs=augment_epochs,
                            seed=seed, unlabelled=unlabelled, student_mode=student_mode, recipe=recipe)
    config.build_method()  # bad method arguments / labels on unlabelled data fail before anything is loaded
    several = not isinstance(teacher, str)
    if several or multi:
        if resume or (dist is not None and dist.enabled):
            raise GktError("multi-teacher transfer runs in one process and is not resumed (its finished transfer "
                           "runs are reused from the cache): start it again without --resume or torchrun")
        return multi_transfer(student, [teacher] if not several else list(teacher), multi=multi or (),
                              config=config, data=data, fraction=fraction, seeds=seeds, order=order,
                              class_map=class_map, data_dir=data_dir, zoo_dir=zoo_dir,
                              device=device if isinstance(device, str) else str(device), threads=threads,
                              bad_images=bad_images, img_size=img_size, out=out, run_dir=run_dir, on_job=on_job,
                              say=say)
    dist = dist or DistContext()
    if run_dir is None:
        run_dir = dist.broadcast(new_run_dir(out, "transfer") if dist.is_main else None)
    run_dir = Path(run_dir)
    set_threads(threads)
    seed_everything(seed)  # before anything is loaded (a random-init model draws its weights), from either door
    device = device if isinstance(device, torch.device) else dist.device(resolve_device(device))
    state = load_state(resume) if resume else None
    runtime = Runtime(cache_outputs=not no_cache, precision=precision, channels_last=channels_last, compile=compile,
                      loader_workers=loader_workers, dist=dist)
    with input_options(bad_images, img_size):  # data decode lazily: the whole run within
        return _run(student, teacher, data, fraction, class_map, seed, data_dir, zoo_dir, device, config, runtime,
                    run_dir, state, resume, on_epoch, dist, say)


def _run(student: str, teacher: str, data: str, fraction: float, class_map: str | Path | dict[str, Any] | None,
         seed: int, data_dir: str | None, zoo_dir: str | None, device: torch.device, config: TransferConfig,
         runtime: Runtime, run_dir: Path, state: dict[str, Any] | None, resume: str | Path | None,
         on_epoch: Callable[[dict[str, Any]], None] | None, dist: DistContext, say: Callable[[str], None]
         ) -> TransferOutcome:
    train = load_data(data, data_dir=data_dir)
    transfer_set = stratified_subset(train, fraction=fraction, seed=seed)
    test_set = load_data(data, "test", data_dir=data_dir)
    info = DataInfo.from_dataset(train)
    mapping = class_map_of(class_map, info)
    student_model = load_model(student, info, zoo_dir, class_map=mapping)
    teacher_model = load_model(teacher, info, zoo_dir, class_map=mapping)
    transfer_set, test_set = decoded_for([student_model, teacher_model], transfer_set, test_set)
    if not dist.is_main:  # another rank of a torchrun job: train and evaluate its share, write nothing
        return run_transfer(student_model, teacher_model, transfer_set, test_set, config, device, None, resume=state,
                            runtime=runtime)
    write_json(run_dir / "resolved_config.json", {
        **config.to_dict(), "student": student, "teacher": teacher, "data": data,
        "class_map": teacher_model.provenance.get("class_map"),
        "transfer_set": {"name": transfer_set.name, "size": len(transfer_set), "fingerprint": transfer_set.fingerprint()},
        "test_set": {"name": test_set.name, "size": len(test_set)}, "device": str(device),
        "runtime": {k: v for k, v in asdict(runtime).items() if k != "dist"} | {"processes": dist.world},
        "resumed_from": str(resume) if resume else None})
    say(f"transfer {teacher} → {student} with {config.method} on {len(transfer_set)} samples ({transfer_set.name}), "
        f"{config.epochs} epochs, lr {config.lr:g} ({config.recipe} recipe), device {device}"
        + (f" x {dist.world} processes" if dist.enabled
                                                                         else "")
        + (f", resuming epoch {state['epoch']} of {resume}" if state else ""))
    outcome = run_transfer(student_model, teacher_model, transfer_set, test_set, config, device, run_dir,
                           resume=state, on_epoch=on_epoch, runtime=runtime)
    plot_history(outcome.history, run_dir / "plot.png", f"{teacher} → {student} ({config.method})",
                 outcome.final["acc_teacher"])
    return outcome
