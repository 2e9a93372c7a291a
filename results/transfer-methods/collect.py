"""Write this folder's results.csv from the ``runs.csv`` of ``gkt study`` runs (one study per pair).

    uv run --frozen --no-sync python results/transfer-methods/collect.py RUN_DIR [RUN_DIR ...]

One row per pair (in :data:`PAIRS` order) and method: Δtransf in points, mean and sample std over the
seeds; the partition columns are the mean share (%) of the test set's positive / negative flips that the
method's data partition gives the teacher (``kl-dp``, ``kl-dp-unsup`` only).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections.abc import Sequence
from pathlib import Path

from gkt.core.io import write_csv

HERE = Path(__file__).resolve().parent
# (teacher, student) in the table's order: weak→strong first, then strong→weak
PAIRS = [("linear-7px", "mlp"), ("linear", "mlp-deep"), ("linear-7px", "cnn"), ("mlp", "linear-7px"),
         ("cnn", "linear"), ("mlp-deep", "mlp-14px"), ("resnet", "vit"), ("cnn", "vit"), ("resnet", "convmixer")]
METHODS = ["kl", "kl-dp", "kl-dp-unsup", "xekl-mcl"]


def zoo_name(spec: str) -> str:
    return spec.removeprefix("zoo:")


def mean_pct(values: list[str]) -> str:
    numbers = [100 * float(v) for v in values if v != ""]
    return f"{statistics.fmean(numbers):.1f}" if numbers else ""


def collect(run_dirs: Sequence[Path]) -> list[dict[str, str]]:
    runs: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for run_dir in run_dirs:
        with open(run_dir / "runs.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["status"] == "done":
                    key = (zoo_name(row["teacher"]), zoo_name(row["student"]), row["method"])
                    runs.setdefault(key, []).append(row)
    out = []
    for teacher, student in PAIRS:
        for method in METHODS:
            rows = sorted(runs.get((teacher, student, method), []), key=lambda r: int(r["seed"]))
            if not rows:
                continue
            seeds = [r["seed"] for r in rows]
            if len(set(seeds)) != len(seeds):
                raise SystemExit(f"{teacher} → {student} {method}: seeds {seeds} repeat across the run directories")
            deltas = [100 * float(r["delta_transf"]) for r in rows]
            teacher_acc, student_acc = 100 * float(rows[0]["acc_teacher"]), 100 * float(rows[0]["acc_student_before"])
            out.append({
                "direction": "weak→strong" if teacher_acc < student_acc else "strong→weak",
                "teacher": teacher, "teacher_acc": f"{teacher_acc:.2f}",
                "student": student, "student_acc": f"{student_acc:.2f}",
                "method": method, "seeds": len(rows), "mean": f"{statistics.fmean(deltas):.2f}",
                "std": f"{statistics.stdev(deltas):.2f}" if len(deltas) > 1 else "",
                "pos_flips_to_teacher_pct": mean_pct([r.get("partition_pos_flips_to_teacher", "") for r in rows]),
                "neg_flips_to_teacher_pct": mean_pct([r.get("partition_neg_flips_to_teacher", "") for r in rows]),
            })
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="gkt study run directories")
    args = parser.parse_args(argv)
    rows = collect(args.run_dirs)
    write_csv(HERE / "results.csv", rows)
    print(f"wrote {HERE / 'results.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
