"""``gkt analyze`` as a Python call: :func:`analyze` takes the CLI's options as keyword arguments and writes
the same run directory (the ρ matrices, per-pair and per-class tables, the random baseline, gains for a
student, ``summary.json``, figures); the CLI parses, calls it and prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gkt.analysis.complementary import Analysis
from gkt.analysis.complementary import analyze as analyze_models
from gkt.core.errors import GktError
from gkt.core.io import new_run_dir, write_csv, write_json
from gkt.core.runtime import resolve_device, seed_everything, set_threads
from gkt.experiments.inputs import class_map_of, data_info, input_options, load_data
from gkt.experiments.zoo import expand_zoo
from gkt.models import load_models


@dataclass(frozen=True)
class AnalyzeConfig:
    """The defaults of ``gkt analyze``'s options (and :func:`analyze`'s keyword arguments)."""

    data: str = "fmnist"
    split: str = "test"
    fraction: float = 1.0
    batch_size: int = 500
    precision: str = "fp32"
    val_fraction: float = 0.1  # ``split="val"`` of data that ships none: this share of train, carved (seeded)


_D = AnalyzeConfig()


@dataclass
class AnalyzeResult:
    """What ``gkt analyze`` wrote in ``run_dir``: ``summary`` is ``summary.json``, ``gains`` is ``gains.json``
    (with a ``student``; else None); ``analysis`` holds every matrix and table the files hold."""

    run_dir: Path
    models: list[str]  # the specs analysed: ``zoo`` expanded, the student added
    summary: dict[str, Any]
    gains: dict[str, Any] | None
    analysis: Analysis
    student: str | None = None  # the student's name in the tables
    figures: list[Path] | None = None  # None: not drawn (``no_figures``)


def resolve_specs(models: Sequence[str], student: str | None, zoo_dir: str | None) -> list[str]:
    """Expand ``zoo`` to every built zoo model, add the student, drop duplicates (order kept)."""
    models = list(models)
    twice = sorted({spec for spec in models if models.count(spec) > 1})
    if twice:
        raise GktError(f"--models names {twice[0]} more than once; give each model once")
    specs = expand_zoo(models, zoo_dir, "--models")
    return list(dict.fromkeys([*specs, *([student] if student else [])]))


def _write_matrix(path: Path, names: Sequence[str], matrix: Any) -> None:
    rows = [{"teacher\\student": n, **dict(zip(names, values))} for n, values in zip(names, matrix.tolist())]
    write_csv(path, rows)


def gains_record(analysis: Analysis, student: str) -> dict[str, Any]:
    """``gains.json``: the teachers ranked for ``student``."""
    view = analysis.gains(student)
    return {"student": view.student, "acc_student": view.acc_student, "any_teacher_rho_pos": view.any_teacher_rho_pos,
            "teachers": [row.to_dict() for row in view.rows]}


def write_results(analysis: Analysis, run_dir: Path, student: str | None) -> None:
    """Matrices (CSV + JSON), per-pair and per-class tables, random baseline, gains and summary."""
    names = analysis.models
    for key in ("rho_pos", "rho_neg", "delta_acc"):
        _write_matrix(run_dir / f"{key}.csv", names, getattr(analysis, key))
    write_json(run_dir / "matrices.json", analysis.matrices())
    write_csv(run_dir / "pairs.csv", analysis.pair_rows())
    write_csv(run_dir / "pair_classes.csv", analysis.class_rows())
    write_csv(run_dir / "overview.csv", analysis.overview())
    if analysis.random is not None:
        write_csv(run_dir / "random_baseline.csv",
                  [{"random_teacher": r, "student": s, "rho_pos": analysis.random.rho_pos[i, j].item(),
                    "samples": analysis.random.samples}
                   for i, r in enumerate(analysis.random.teachers) for j, s in enumerate(names)])
    if student:
        write_csv(run_dir / "gains.csv", [row.to_dict() for row in analysis.gains(student).rows])
        write_json(run_dir / "gains.json", gains_record(analysis, student))
    write_json(run_dir / "summary.json", analysis.summary())


def analyze(models: Sequence[str], *, data: str = _D.data, split: str = _D.split, fraction: float = _D.fraction,
            student: str | None = None, class_map: str | Path | dict[str, Any] | None = None,
            batch_size: int = _D.batch_size, precision: str = _D.precision, refresh: bool = False,
            no_random_baseline: bool = False, no_semantic: bool = False, no_figures: bool = False, seed: int = 0,
            data_dir: str | None = None, zoo_dir: str | None = None, device: str | torch.device = "auto",
            threads: int | None = None, bad_images: str | None = None, img_size: int | None = None,
            out: str | Path = "runs", run_dir: str | Path | None = None,
            say: Callable[[str], None] = print) -> AnalyzeResult:
    """The complementary knowledge between ``models`` (paper §3), as ``gkt analyze`` computes and writes it.

    ``models``: model specs (``zoo:NAME``, ``timm:...``, ``hf:...``, ``torchvision:...``, ``file:PATH``), or
    ``zoo`` for every built zoo model.
    ``data``: the data spec (as :func:`gkt.load_data`). ``split``: the split analysed (``train``, ``val``,
    ``test``). ``fraction``: analyse a stratified share of it, drawn with ``seed``.
    ``student``: a spec whose teachers are ranked (``gains.json``; added to ``models``).
    ``class_map``: a JSON/YAML file or dict ``{data_class: model_class_or_list}`` aligning every model's classes
    to the data's; None: classes matched by name.
    ``batch_size``: forward-pass batch size. ``precision``: autocast precision of the forward passes
    (``auto``, ``fp32``, ``bf16``, ``fp16``). ``refresh``: recompute predictions even when stored.
    ``no_random_baseline``: skip the random-initialised-teacher baseline. ``no_semantic``: skip the class-name
    semantic similarity. ``no_figures``: write tables only.
    ``seed``: the seed of ``fraction``'s draw, a carved val split and the random-init teachers.
    ``data_dir``: the Fashion-MNIST directory. ``zoo_dir``: where the embedded zoo is cached.
    ``device``: ``auto`` (CUDA if available), ``cpu``, ``cuda:1``, ... ``threads``: torch's CPU threads for this
    process (None: torch's default). ``bad_images``: ``fail`` or ``skip`` an
    undecodable image. ``img_size``: every library model's input size in px.
    ``out``: the root of run directories; ``run_dir``: the run directory itself (default: a new one under
    ``out``). ``say``: where the progress line goes."""
    set_threads(threads)
    seed_everything(seed)
    specs = resolve_specs(models, student, zoo_dir)
    if len(specs) < 2:  # before any data or weights are read
        raise GktError(f"complementary knowledge needs at least 2 models, got only {specs[0] if specs else 'none'}; "
                       "give two or more with --models")
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    with input_options(bad_images, img_size):
        dataset = load_data(data, split, fraction=fraction, seed=seed, val_fraction=_D.val_fraction, data_dir=data_dir)
        info = data_info(dataset)
        loaded = load_models(specs, info, zoo_dir, class_map=class_map_of(class_map, info))
        student_name = loaded[specs.index(student)].name if student else None
        say(f"analysing {len(loaded)} models on {dataset.name} ({len(dataset)} samples): one forward pass per model "
            "and per random-init architecture, reused from the prediction store when possible")
        analysis = analyze_models(loaded, dataset, torch_device, batch_size=batch_size, refresh=refresh,
                                  random_baseline=not no_random_baseline, seed=seed, semantic=not no_semantic,
                                  precision=precision)
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(out, "analyze")
    write_results(analysis, run_dir, student_name)
    figures = None
    if not no_figures:
        from gkt.reporting.analysis_figures import write_figures

        figures = write_figures(analysis, run_dir / "figures", student_name)
    return AnalyzeResult(run_dir, specs, analysis.summary(), gains_record(analysis, student_name) if student_name
                         else None, analysis, student_name, figures)
