"""``gkt analyze``: where is the complementary knowledge between these models (paper §3)?"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gkt.cli import register_verb
from gkt.core.errors import GktError
from gkt.core.io import write_csv, write_json
from gkt.reporting.tables import format_table

if TYPE_CHECKING:
    from gkt.analysis.complementary import Analysis


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.data.spec import SYNTAX
    from gkt.models.specs import source_prefixes

    p.add_argument("--models", nargs="+", required=True, metavar="SPEC",
                   help=f"model specs ({source_prefixes()}; see gkt --help), or `zoo` for every built zoo model")
    p.add_argument("--data", default="fmnist", help=f"data spec {SYNTAX} (default: fmnist)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="evaluation split (default: test)")
    p.add_argument("--fraction", type=float, default=1.0, help="analyse a stratified share of the split (seeded)")
    p.add_argument("--student", metavar="SPEC",
                   help=f"show where to find gains for this model ({source_prefixes()}; added to --models)")
    p.add_argument("--class-map", metavar="FILE",
                   help="JSON/YAML {data_class: model_class_or_list} aligning the models' classes to the data's "
                        "(as for gkt transfer); without it, classes that differ only in order or case are matched")
    p.add_argument("--batch-size", type=int, default=500, help="forward-pass batch size (default: 500)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision of the forward passes (auto: bf16 on a GPU that supports it; "
                        "reduced-precision predictions are stored apart from fp32 ones; default fp32)")
    p.add_argument("--refresh", action="store_true", help="recompute predictions even when stored")
    p.add_argument("--no-random-baseline", action="store_true", help="skip the random-initialised-teacher baseline")
    p.add_argument("--no-semantic", action="store_true", help="skip the class-name semantic similarity")
    p.add_argument("--no-figures", action="store_true", help="write tables only")


def resolve_specs(models: Sequence[str], student: str | None, zoo_dir: str | None) -> list[str]:
    """Expand ``zoo`` to every built zoo model, add the student, drop duplicates (order kept)."""
    from gkt.experiments.zoo import list_zoo
    from gkt.models.zoo import zoo_dir_default

    twice = sorted({spec for spec in models if models.count(spec) > 1})
    if twice:
        raise GktError(f"--models names {twice[0]} more than once; give each model once")
    specs: list[str] = []
    for spec in models:
        if spec == "zoo":
            built = [f"zoo:{r.name}" for r in list_zoo(zoo_dir)]
            if not built:
                raise GktError(f"`--models zoo` found no built zoo models in {zoo_dir or zoo_dir_default()}; "
                               "run `gkt zoo build` first")
            specs += built
        else:
            specs.append(spec)
    if student:
        specs.append(student)
    return list(dict.fromkeys(specs))


def _write_matrix(path: Path, names: Sequence[str], matrix: Any) -> None:
    rows = [{"teacher\\student": n, **dict(zip(names, values))} for n, values in zip(names, matrix.tolist())]
    write_csv(path, rows)


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
        view = analysis.gains(student)
        write_csv(run_dir / "gains.csv", [row.to_dict() for row in view.rows])
        write_json(run_dir / "gains.json", {"student": view.student, "acc_student": view.acc_student,
                                            "any_teacher_rho_pos": view.any_teacher_rho_pos,
                                            "teachers": [row.to_dict() for row in view.rows]})
    write_json(run_dir / "summary.json", analysis.summary())


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def _num(v: float | None, spec: str = ".3f") -> str:
    """A statistic that is undefined without flips (NaN, or missing) as ``n/a``."""
    return "n/a" if v is None or math.isnan(v) else format(v, spec)


def print_gains(analysis: Analysis, student: str) -> None:
    view = analysis.gains(student)
    print(f"\nWhere to find gains for {student} (test accuracy {_pct(view.acc_student)}): teachers ranked by the "
          f"complementary knowledge they hold for it (ρ_pos = teacher right, student wrong; ρ_neg = the reverse)")
    print(format_table([{"teacher": r.teacher, "acc": _pct(r.acc_teacher), "Δacc": f"{100 * r.delta_acc:+.2f}",
                         "ρ_pos": _pct(r.rho_pos), "ρ_neg": _pct(r.rho_neg), "×random": f"{r.vs_random:.1f}",
                         "entropy": f"{r.entropy:.2f}", "top classes (flips / class samples)":
                             ", ".join(f"{n} {100 * v:.1f}%" for n, v in r.top_classes)} for r in view.rows]))
    print(f"all {len(view.rows)} teachers together get right {_pct(view.any_teacher_rho_pos)} of the samples "
          f"{student} gets wrong")


def print_overview(analysis: Analysis) -> None:
    print("\nBest teacher for each student (by ρ_pos; use --student SPEC for the full ranking):")
    print(format_table([{"student": r["student"], "acc": _pct(r["acc"]), "best teacher": r["best_teacher"],
                         "ρ_pos": _pct(r["rho_pos"]), "Δacc": f"{100 * r['delta_acc']:+.2f}",
                         "all teachers ρ_pos": _pct(r["any_teacher_rho_pos"])} for r in analysis.overview()]))


def print_summary(summary: dict[str, Any]) -> None:
    pos = summary["rho_pos"]
    print(f"\nSummary ({summary['models']} models, {summary['ordered_pairs']} ordered pairs, {summary['dataset']}, "
          f"{summary['samples']} samples, {summary['classes']} classes):")
    print(f"- ρ_pos over pairs: mean {_pct(pos['mean'])}, median {_pct(pos['median'])}, range "
          f"{_pct(pos['min'])}–{_pct(pos['max'])}; ρ_pos ≥ 1% for {_pct(pos['share_pairs_ge_1pct'])} of ordered pairs")
    if "random_baseline" in summary:
        rb = summary["random_baseline"]
        sample = "" if rb["samples"] == summary["samples"] else f", on a stratified sample of {rb['samples']}"
        print(f"- random-init teachers ({len(rb['teachers'])} architectures, seed {rb['seed']}{sample}): ρ_pos mean "
              f"{_pct(rb['rho_pos_mean'])}, max {_pct(rb['rho_pos_max'])} (a uniform guess: "
              f"{_pct(rb['uniform_guess_rho_pos_mean'])}); each pair vs its student's random "
              f"baseline: min {rb['pair_over_random_min']:.1f}×, median {rb['pair_over_random_median']:.1f}×, "
              f"{_pct(rb['share_pairs_above_5x_random'])} of pairs above 5×, "
              f"{_pct(rb['share_pairs_above_every_random_teacher'])} above every random teacher")
    if not pos.get("max"):  # no model gets right what another gets wrong: no flips to describe
        print("- no flips: no model gets any sample right that another gets wrong, so the flip statistics "
              "(entropy, concentration, semantic similarity) are undefined")
        return
    ent = summary["entropy"]
    mm = ent["miller_madow"]
    print(f"- entropy of the per-class flip distribution (uniform = ln {summary['classes']} = {ent['uniform_ln_c']:.3f}): "
          f"weaker teachers {_num(ent['weaker_teachers_mean'])}, stronger teachers "
          f"{_num(ent['stronger_teachers_mean'])}; Spearman vs Δacc "
          f"{_num(ent['spearman_vs_delta_acc'], '+.2f')} "
          f"(within student {_num(ent['within_student_spearman_vs_delta_acc'], '+.2f')}); "
          f"Miller–Madow corrected: {_num(mm['weaker_teachers_mean'])} vs "
          f"{_num(mm['stronger_teachers_mean'])}, "
          f"Spearman {_num(mm['spearman_vs_delta_acc'], '+.2f')}")
    conc = "; ".join(f"top {v['top_classes']} class(es) hold {_pct(v['share_of_flips_in_top_classes'])} of flips, "
                     f"{x} of flips sit in {_num(v['classes_holding_mean'], '.2f')} classes"
                     for x, v in summary["concentration"].items() if x in ("20%", "50%"))
    print(f"- concentration: {conc}")
    sem = summary["semantic"]
    if sem["available"]:
        rel = ", ".join(f"top-{x} " + ("n/a" if "mean" not in v else f"{100 * v['mean']:+.1f}%")
                        for x, v in sem["relative_similarity_top_x"].items())
        print(f"- semantic similarity of the classes holding the top-X% of flips vs the mean class similarity "
              f"({sem['mean_class_similarity']:.3f}): {rel}")
    else:
        print(f"- semantic similarity: not computed ({sem['note']})")


@register_verb("analyze", "complementary knowledge between models: flips, per-class structure, where to find gains",
               _configure)
def analyze_verb(args: argparse.Namespace) -> int:
    from gkt.analysis.complementary import analyze
    from gkt.data.spec import load_split
    from gkt.data.subsets import stratified_subset
    from gkt.models import DataInfo, load_models

    start = time.perf_counter()
    specs = resolve_specs(args.models, args.student, args.zoo_dir)
    if len(specs) < 2:  # before any data or weights are read
        raise GktError(f"complementary knowledge needs at least 2 models, got only {specs[0] if specs else 'none'}; "
                       "give two or more with --models")
    dataset = load_split(args.data, args.split, data_dir=args.data_dir, seed=args.seed)
    if args.fraction < 1:
        dataset = stratified_subset(dataset, fraction=args.fraction, seed=args.seed)
    info = DataInfo.from_dataset(dataset)
    models = load_models(specs, info, args.zoo_dir, class_map=args.class_map or "auto")
    student = models[specs.index(args.student)].name if args.student else None
    print(f"analysing {len(models)} models on {dataset.name} ({len(dataset)} samples): one forward pass per model "
          "and per random-init architecture, reused from the prediction store when possible")
    analysis = analyze(models, dataset, args.torch_device, batch_size=args.batch_size, refresh=args.refresh,
                       random_baseline=not args.no_random_baseline, seed=args.seed, semantic=not args.no_semantic,
                       precision=args.precision)
    write_results(analysis, args.run_dir, student)
    if not args.no_figures:
        from gkt.reporting.analysis_figures import write_figures

        write_figures(analysis, args.run_dir / "figures", student)
    if student:
        print_gains(analysis, student)
    else:
        print_overview(analysis)
    print_summary(analysis.summary())
    print(f"\ndone in {time.perf_counter() - start:.0f}s; run directory: {args.run_dir}")
    return 0
