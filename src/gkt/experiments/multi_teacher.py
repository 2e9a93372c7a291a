"""Multi-teacher studies: every mode over a list of students."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gkt.core.io import write_csv
from gkt.models.classifier import Classifier
from gkt.reporting.multi_teacher import write_result
from gkt.reporting.tables import mean_std
from gkt.transfer.multi import MODES, MultiResult, MultiTeacherStudy


def table_row(singles: Sequence[dict[str, Any]], results: dict[str, MultiResult]) -> dict[str, float]:
    """One seed's Table-4 row: single-teacher Δtransf mean/min/max, then each mode's Δtransf."""
    deltas = [row["delta_transf"] for row in singles]
    row = {"single_mean": statistics.fmean(deltas), "single_min": min(deltas), "single_max": max(deltas),
           **{mode: result.metrics["delta_transf"] for mode, result in results.items()}}
    if "sequential" in results:
        row["sequential_minus_best_single"] = row["sequential"] - row["single_max"]
    return row


def aggregate_rows(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{column: {mean, std, n}}`` over seeds (sample std; 0 for one seed)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = {}
    for column in columns:
        values = [row[column] for row in rows if column in row]
        mean, std = mean_std(values)
        out[column] = {"mean": mean, "std": std, "n": len(values)}
    return out


def summary_entry(student: Classifier, acc_student: float, teachers: Sequence[str], method: str,
                  per_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    """The JSON record of one student's Table-4 line: per-seed rows and their aggregate."""
    rows = list(per_seed.values())
    beats = sum(row["sequential_minus_best_single"] > 0 for row in rows if "sequential_minus_best_single" in row)
    return {"student": student.name, "acc_student": acc_student, "teachers": list(teachers), "method": method,
            "seeds": list(per_seed), "per_seed": {str(s): r for s, r in per_seed.items()},
            "aggregate": aggregate_rows(rows), "sequential_beats_best_single_seeds": beats}


def run_study(study: MultiTeacherStudy, modes: Sequence[str], out_dir: Path
              ) -> tuple[list[dict[str, Any]], dict[str, MultiResult]]:
    """The single-teacher runs and the requested modes; writes ``single.csv`` and one directory per mode."""
    singles = study.single()
    write_csv(out_dir / "single.csv", singles)
    results = {}
    for mode in modes:
        results[mode] = MODES[mode](study)
        write_result(results[mode], out_dir / mode)
    return singles, results
