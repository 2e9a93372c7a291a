"""The *Findings* a run's report opens with, in the units the terminal prints: accuracies in %, Δtransf,
knowledge gain and loss in points (pp, 100 × the fractions in the run's JSON files).

A run that writes ``findings.json`` (study, adapt/crossdomain with transfers, improve, mutual) opens with
its sentences and claims; for the others they come from the files each verb writes: ``final.json``
(transfer), ``summary.json`` (multi-teacher transfer), ``overview.csv`` (analyze), ``results.json`` /
``pretrain.json`` / ``finetune.json`` (kdep), ``adapted.json`` (adapt).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gkt.core.io import parse_json, read_csv

Findings = tuple[list[str], list[dict[str, Any]]]


def number(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """``value`` to ``digits`` decimals (``signed``: with its sign); a value that rounds to zero is ``0.00``
    (never ``-0.00``); None or NaN ``n/a``."""
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:{'+' if signed else ''}.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def pct(fraction: float | None) -> str:
    """A fraction in % of samples, as the terminal prints it (``89.02``)."""
    return number(None if fraction is None else 100 * fraction)


def pp(fraction: float | None, signed: bool = True) -> str:
    """A fraction as points (``+0.02 pp``)."""
    return number(None if fraction is None else 100 * fraction, signed=signed) + " pp"


def transfer_findings(final: dict[str, Any]) -> list[str]:
    """A transfer run's result (its ``final.json``) in three sentences, as ``gkt transfer`` prints it."""
    config = final.get("config", {})
    out = [f"Δtransf {pp(final['delta_transf'])}: the student's test accuracy {pct(final['acc_student_before'])}% → "
           f"{pct(final['acc'])}% (teacher {pct(final['acc_teacher'])}%); knowledge gain "
           f"{pp(final['knowledge_gain'], False)}, knowledge loss {pp(final['knowledge_loss'], False)} (points on "
           f"{final['test_samples']} test samples; {final.get('method', config.get('method'))}, "
           f"{final.get('epoch', config.get('epochs'))} epoch(s))."]
    rates = {k.removeprefix("transfer_rate_"): v for k, v in final.items() if k.startswith("transfer_rate_")}
    if rates:
        out.append("The transfer rate of the teacher's positive flips (the share the student learnt), in the "
                   "classes holding the top-X% of them: "
                   + ", ".join(f"{k}% {pct(v)}%" for k, v in rates.items())
                   + (" (n/a: the teacher has no positive flips there)" if any(math.isnan(v) for v in rates.values())
                      else "") + ".")
    quality = final.get("partition_quality")
    if quality:
        out.append(f"Data partition on the transfer set: {pct(quality['pos_flips_to_teacher'])}% of the positive "
                   f"flips and {pct(quality['neg_flips_to_teacher'])}% of the negative flips go to the teacher "
                   f"({pct(quality['samples_to_teacher'])}% of all samples; the paper: 72% / 9%).")
    return out


def multi_teacher_findings(entries: list[dict[str, Any]]) -> list[str]:
    """Per student of a multi-teacher transfer (``summary.json``): Δtransf of each mode and of the single
    teachers, mean ± std over seeds in points."""
    names = {"sequential": "sequential", "parallel": "parallel", "soup": "model soup"}
    out = []
    for entry in entries:
        agg = entry["aggregate"]
        cell = lambda key: f"{number(100 * agg[key]['mean'], signed=True)} ± {pp(agg[key]['std'], False)}"  # noqa: E731
        modes = [f"{label} {cell(key)}" for key, label in names.items() if key in agg]
        text = (f"{entry['student']} (test accuracy {pct(entry['acc_student'])}%, {entry['method']}, "
                f"{len(entry['seeds'])} seed(s)): Δtransf " + ", ".join(modes))
        if "single_mean" in agg:
            text += (f"; each teacher alone {cell('single_mean')} on average (best {pp(agg['single_max']['mean'])}, "
                     f"worst {pp(agg['single_min']['mean'])})")
        if "sequential_minus_best_single" in agg:
            text += f"; sequential minus the best single teacher {cell('sequential_minus_best_single')}"
        out.append(text + " (mean ± std over seeds).")
    return out


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def analysis_findings(overview: list[dict[str, str]]) -> list[str]:
    """Per student of an analysis (``overview.csv``): the teacher with the most complementary knowledge."""
    return [f"{r['student']} ({pct(_float(r['acc']))}% test accuracy): the teacher with the most complementary "
            f"knowledge is {r['best_teacher']}, right where the student is wrong on {pct(_float(r['rho_pos']))}% "
            f"of the test samples (ρ_pos; Δacc {pp(_float(r['delta_acc']))}); some teacher is on "
            f"{pct(_float(r['any_teacher_rho_pos']))}%." for r in overview]


def kdep_benchmark_findings(results: dict[str, Any]) -> list[str]:
    """The KDEP benchmark's methods, best first: mean downstream accuracy and pre-training time."""
    rows = sorted(results.get("summary", []), key=lambda r: -r["mean_acc"])
    return [f"{r['method']}: mean downstream accuracy {pct(r['mean_acc'])} ± {pct(r['mean_std'])}% over "
            f"{r.get('seeds', '?')} seed(s), after {r['pretrain_s']} s of pre-training on {r['pretrain_samples']} "
            "samples." for r in rows]


def kdep_findings(run_dir: Path) -> list[str]:
    out = []
    if (run_dir / "pretrain.json").is_file():
        m = parse_json((run_dir / "pretrain.json").read_text())
        losses = m.get("losses") or []
        if losses:
            out.append(f"Pre-training ({m['objective']}) on {m['samples']} samples of {m['data']}: loss "
                       f"{losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} epoch(s) in {m['seconds']} s.")
    if (run_dir / "finetune.json").is_file():
        m = parse_json((run_dir / "finetune.json").read_text())
        out.append(f"{m['model']} fine-tuned on {m['train_samples']} samples of {m['train']}: test accuracy "
                   f"{pct(m['test_acc'])}% on {m['test_samples']} samples.")
    if (run_dir / "results.json").is_file():
        out += kdep_benchmark_findings(parse_json((run_dir / "results.json").read_text()))
    return out


def adapt_findings(adapted: dict[str, Any]) -> list[str]:
    """The models adapted to a new label space: test accuracy with the new head (in %, as printed)."""
    return [f"{r['model']} adapted to {adapted['data']} ({r['mode']}): test accuracy {number(float(r['test_acc']))}% "
            f"(linear probe {number(float(r['probe_test_acc']))}%)." for r in adapted.get("models", [])]


def _json(path: Path) -> Any:
    return parse_json(path.read_text())


# A run directory's findings from the files its verb wrote, tried in order (several may apply: adapt with
# --transfer has its adapted models and a study's findings).
SOURCES: tuple[tuple[str, Callable[[Path], list[str]]], ...] = (
    ("adapted.json", lambda d: adapt_findings(_json(d / "adapted.json"))),
    ("final.json", lambda d: transfer_findings(_json(d / "final.json")) if "delta_transf" in _json(d / "final.json")
     else []),
    ("summary.json", lambda d: multi_teacher_findings(_json(d / "summary.json"))
     if isinstance(_json(d / "summary.json"), list) else []),
    ("overview.csv", lambda d: analysis_findings(read_csv(d / "overview.csv"))),
)


def run_findings(run_dir: Path) -> Findings:
    """The sentences and claims a run directory's report opens with."""
    sentences: list[str] = []
    for name, make in SOURCES:
        if (run_dir / name).is_file():
            sentences += make(run_dir)
    sentences += kdep_findings(run_dir)
    claims: list[dict[str, Any]] = []
    if (run_dir / "findings.json").is_file():
        found = _json(run_dir / "findings.json")
        sentences += found["sentences"]
        claims = found["claims"]
    return sentences, claims
