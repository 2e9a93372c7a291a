"""``gkt transfer`` as a Python call: :func:`transfer` takes the CLI's options as keyword arguments and
writes the same run directory (``resolved_config.json``, ``metrics.csv``, ``final.json``, ``plot.png``, the
transferred student); the CLI parses, calls it and prints. One teacher here; several go through
:mod:`gkt.experiments.multi_teacher`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gkt.core.io import new_run_dir, write_json
from gkt.core.runtime import resolve_device, seed_everything
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.engine.distributed import DistContext
from gkt.engine.loop import Runtime
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


def transfer(student: str, teacher: str, *, data: str = "fmnist", method: str = _D.method,
             method_args: dict[str, Any] | None = None, fraction: float = TRANSFER_FRACTION, epochs: int = _D.epochs,
             lr: float | None = None, batch_size: int = _D.batch_size, temperature: float = _D.temperature,
             weight_decay: float = _D.weight_decay, augment: tuple[str, ...] | list[str] | None = None,
             augment_epochs: int = _D.augment_epochs, unlabelled: bool = False, student_mode: str = _D.student_mode, recipe: str = _D.recipe,
             class_map: str | Path | dict[str, Any] | None = None, seed: int = 0, data_dir: str | None = None,
             zoo_dir: str | None = None, device: str | torch.device = "auto", precision: str = Runtime.precision,
             no_cache: bool = False, channels_last: bool = False, compile: bool = False,
             loader_workers: int | None = None, out: str | Path = "runs", run_dir: str | Path | None = None,
             resume: str | Path | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
             dist: DistContext | None = None, say: Callable[[str], None] = print) -> TransferOutcome:
    """Transfer ``teacher`` into ``student`` on a stratified ``fraction`` of ``data``'s train split and measure
    it on the test split, as ``gkt transfer`` does with the same options; returns the outcome, whose
    ``final`` is ``RUN_DIR/final.json``. ``class_map`` (a file or a mapping) aligns both models to the data's
    classes; ``resume`` continues a killed run's directory. Under ``torchrun`` (``dist``) only rank 0 writes.
    ``lr`` and ``augment`` left as None take the ``recipe``'s (:mod:`gkt.transfer.recipes`)."""
    dist = dist or DistContext()
    if run_dir is None:
        run_dir = dist.broadcast(new_run_dir(out, "transfer") if dist.is_main else None)
    run_dir = Path(run_dir)
    seed_everything(seed)  # before anything is loaded (a random-init model draws its weights), from either door
    device = device if isinstance(device, torch.device) else dist.device(resolve_device(device))
    state = load_state(resume) if resume else None
    config = TransferConfig(method=method, method_args=dict(method_args or {}), epochs=epochs, lr=lr,
                            weight_decay=weight_decay, batch_size=batch_size, temperature=temperature,
                            augment=None if augment is None else tuple(augment), augment_epochs=augment_epochs, seed=seed, unlabelled=unlabelled,
                            student_mode=student_mode, recipe=recipe)
    config.build_method()  # bad method arguments / labels on unlabelled data fail before anything is loaded
    runtime = Runtime(cache_outputs=not no_cache, precision=precision, channels_last=channels_last, compile=compile,
                      loader_workers=loader_workers, dist=dist)
    train = load_split(data, "train", data_dir=data_dir, val_fraction=0)
    transfer_set = stratified_subset(train, fraction=fraction, seed=seed)
    test_set = load_split(data, "test", data_dir=data_dir)
    info = DataInfo.from_dataset(train)
    mapping = class_map if isinstance(class_map, dict) else (str(class_map) if class_map else "auto")
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
    say(f"transfer {teacher} → {student} with {method} on {len(transfer_set)} samples ({transfer_set.name}), "
        f"{config.epochs} epochs, lr {config.lr:g} ({config.recipe} recipe), device {device}" + (f" x {dist.world} processes" if dist.enabled
                                                                         else "")
        + (f", resuming epoch {state['epoch']} of {resume}" if state else ""))
    outcome = run_transfer(student_model, teacher_model, transfer_set, test_set, config, device, run_dir,
                           resume=state, on_epoch=on_epoch, runtime=runtime)
    plot_history(outcome.history, run_dir / "plot.png", f"{teacher} → {student} ({config.method})",
                 outcome.final["acc_teacher"])
    return outcome
