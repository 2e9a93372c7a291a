"""``gkt analyze``: where is the complementary knowledge between these models (paper §3)?"""

from __future__ import annotations

import argparse
import math
import time
from typing import TYPE_CHECKING, Any

from gkt.cli import register_verb
from gkt.reporting.findings import number
from gkt.reporting.tables import format_table

if TYPE_CHECKING:
    from gkt.analysis.complementary import Analysis


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.data.spec import SYNTAX
    from gkt.experiments.analyze import AnalyzeConfig
    from gkt.models.specs import source_prefixes

    d = AnalyzeConfig()
    p.add_argument("--models", nargs="+", required=True, metavar="SPEC",
                   help=f"model specs ({source_prefixes()}; see gkt --help), or `zoo` for every built zoo model")
    p.add_argument("--data", default=d.data, help=f"data spec {SYNTAX} (default: {d.data})")
    p.add_argument("--split", default=d.split, choices=("train", "val", "test"), help=f"evaluation split (default: {d.split})")
    p.add_argument("--fraction", type=float, default=d.fraction, help="analyse a stratified share of the split (seeded)")
    p.add_argument("--student", metavar="SPEC",
                   help=f"show where to find gains for this model ({source_prefixes()}; added to --models)")
    p.add_argument("--class-map", metavar="FILE",
                   help="JSON/YAML {data_class: model_class_or_list} aligning the models' classes to the data's "
                        "(as for gkt transfer); without it, classes that differ only in order or case are matched")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"forward-pass batch size (default: {d.batch_size})")
    p.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision of the forward passes (auto: bf16 on a GPU that supports it; "
                        "reduced-precision predictions are stored apart from fp32 ones; default fp32)")
    p.add_argument("--refresh", action="store_true", help="recompute predictions even when stored")
    p.add_argument("--no-random-baseline", action="store_true", help="skip the random-initialised-teacher baseline")
    p.add_argument("--no-semantic", action="store_true", help="skip the class-name semantic similarity")
    p.add_argument("--no-figures", action="store_true", help="write tables only")


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def _num(v: float | None, spec: str = ".3f") -> str:
    """A statistic that is undefined without flips (NaN, or missing) as ``n/a``."""
    return "n/a" if v is None or math.isnan(v) else format(v, spec)


def print_gains(analysis: Analysis, student: str) -> None:
    view = analysis.gains(student)
    print(f"\nWhere to find gains for {student} (test accuracy {_pct(view.acc_student)}): teachers ranked by the "
          f"complementary knowledge they hold for it (ρ_pos = teacher right, student wrong; ρ_neg = the reverse)")
    print(format_table([{"teacher": r.teacher, "acc": _pct(r.acc_teacher), "Δacc": number(100 * r.delta_acc, signed=True),
                         "ρ_pos": _pct(r.rho_pos), "ρ_neg": _pct(r.rho_neg),
                         "×random": f"{r.vs_random:.1f}" if math.isfinite(r.vs_random) else "n/a (random 0%)",
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
    from gkt.experiments.analyze import analyze

    start = time.perf_counter()
    result = analyze(
        args.models, data=args.data, split=args.split, fraction=args.fraction, student=args.student,
        class_map=args.class_map, batch_size=args.batch_size, precision=args.precision, refresh=args.refresh,
        no_random_baseline=args.no_random_baseline, no_semantic=args.no_semantic, no_figures=args.no_figures,
        seed=args.seed, data_dir=args.data_dir, zoo_dir=args.zoo_dir, device=args.torch_device,
        threads=args.threads, bad_images=args.bad_images, img_size=args.img_size, run_dir=args.run_dir)
    if result.student:
        print_gains(result.analysis, result.student)
    else:
        print_overview(result.analysis)
    print_summary(result.summary)
    print(f"\ndone in {time.perf_counter() - start:.0f}s; run directory: {args.run_dir}")
    return 0
