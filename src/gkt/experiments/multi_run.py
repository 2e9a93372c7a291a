"""``gkt transfer --teacher A --teacher B --multi MODE...`` as a Python call: :func:`multi_transfer` runs the
single-teacher transfers and the multi-teacher modes (paper §4.3, Table 4) for each seed and writes the same
run directory (``resolved_config.json``, ``seedN/<mode>/``, ``summary.md/csv/json``); the CLI parses, calls it
and prints. ``gkt.transfer(teacher=[...], multi=[...])`` comes here."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gkt.core.errors import GktError
from gkt.core.io import new_run_dir, write_json
from gkt.core.runtime import resolve_device, seed_everything, set_threads
from gkt.data.subsets import stratified_subset
from gkt.experiments.inputs import class_map_of, input_options, load_data
from gkt.experiments.multi_teacher import (
    MultiResult,
    MultiTeacherStudy,
    TransferSetup,
    run_multi_teacher,
    summary_entry,
    table_row,
)
from gkt.models import DataInfo, load_model
from gkt.reporting.multi_teacher import write_summary
from gkt.transfer import TransferConfig, decoded_for
from gkt.transfer.multi import resolve_modes

JobCallback = Callable[[str, dict[str, Any], dict[str, Any]], None]


@dataclass
class MultiTransferOutcome:
    """What a multi-teacher transfer wrote: per seed, the single-teacher rows and each mode's result; the
    summary entry (``summary.json``); the student's test accuracy; the run directory."""

    run_dir: Path
    acc_student: float
    seeds: dict[int, tuple[list[dict[str, Any]], dict[str, MultiResult]]]
    summary: dict[str, Any]


def multi_transfer(student: str, teachers: Sequence[str], *, multi: Sequence[str] | str, config: TransferConfig,
                   data: str = "fmnist", fraction: float, seeds: Sequence[int] | None = None, order: str = "given",
                   class_map: str | Path | Mapping[str, Any] | None = None, data_dir: str | None = None,
                   zoo_dir: str | None = None, device: str = "auto", threads: int | None = None,
                   bad_images: str | None = None, img_size: int | None = None, out: str | Path = "runs",
                   run_dir: str | Path | None = None, on_job: JobCallback | None = None,
                   say: Callable[[str], None] = print) -> MultiTransferOutcome:
    """Transfer each of ``teachers`` into ``student`` alone, then combined as ``multi`` says (``sequential``,
    ``parallel``, ``soup`` or ``all``), for every seed of ``seeds`` (default: ``config.seed``), as
    ``gkt transfer --multi`` does; ``order``: the sequential order (``given``, ``asc``, ``desc`` by test
    accuracy). The other options are :func:`gkt.experiments.transfer_run.transfer`'s. ``on_job`` receives
    ``(name, config, metrics)`` of every run as it ends (experiment trackers)."""
    specs = list(teachers)
    twice = sorted({s for s in specs if specs.count(s) > 1})
    if twice:
        raise GktError(f"teacher {twice[0]} is given twice; give each teacher once")
    if not multi:
        raise GktError(f"{len(specs)} teachers: choose how to combine them with --multi sequential|parallel|soup|all")
    modes = resolve_modes(list(multi) if not isinstance(multi, str) else [multi], config.method)
    seeds = list(seeds or [config.seed])
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(out, "transfer")
    set_threads(threads)
    seed_everything(config.seed)
    torch_device = resolve_device(device)
    with input_options(bad_images, img_size):
        train = load_data(data, data_dir=data_dir)
        test_set = load_data(data, "test", data_dir=data_dir)
        info = DataInfo.from_dataset(train)
        mapping = class_map_of(class_map, info)
        student_model = load_model(student, info, zoo_dir, class_map=mapping)
        teacher_models = [load_model(spec, info, zoo_dir, class_map=mapping) for spec in specs]
        train, test_set = decoded_for([student_model, *teacher_models], train, test_set)
        write_json(run_dir / "resolved_config.json", {
            **config.to_dict(), "student": student, "teachers": specs, "modes": modes, "order": order,
            "seeds": seeds, "data": data, "fraction": fraction,
            "test_set": {"name": test_set.name, "size": len(test_set)}, "device": str(torch_device)})
        say(f"multi-teacher transfer into {student} from {', '.join(specs)} with {config.method}: single-teacher "
            f"runs + {', '.join(modes)}; seeds {seeds}, {config.epochs} epochs, lr {config.lr:g}, "
            f"device {torch_device}")
        per_seed, rows, study = {}, {}, None
        for seed in seeds:
            setup = TransferSetup(stratified_subset(train, fraction=fraction, seed=seed), test_set,
                                  replace(config, seed=seed), torch_device)
            study = MultiTeacherStudy(student_model, teacher_models, setup, order=order)
            singles, results = run_multi_teacher(study, modes, run_dir / f"seed{seed}")
            if on_job is not None:
                for i, row in enumerate(singles):
                    on_job(f"seed{seed}-single{i}", {"seed": seed, "mode": "single", "teacher": row["teacher"]}, row)
                for mode, result in results.items():
                    on_job(f"seed{seed}-{mode}", {"seed": seed, "mode": mode}, result.metrics)
            per_seed[seed] = (singles, results)
            rows[seed] = table_row(singles, results)
    entry = summary_entry(student_model, study.acc_student, specs, config.method, rows)
    write_summary([entry], run_dir)
    return MultiTransferOutcome(run_dir, study.acc_student, per_seed, entry)
