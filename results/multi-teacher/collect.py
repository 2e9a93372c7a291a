"""Write this folder's results.csv from the ``summary.csv`` of ``gkt transfer --multi all --seeds ...`` runs.

    uv run --frozen --no-sync python results/multi-teacher/collect.py RUN_DIR [RUN_DIR ...]

One row per run (student and method, in the order given) and Table-4 column: Δtransf in points, mean and
sample std over the run's seeds.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from gkt.core.io import write_csv
from gkt.reporting.multi_teacher import SUMMARY_COLUMNS

HERE = Path(__file__).resolve().parent


def collect(run_dirs: Sequence[Path]) -> list[dict[str, str]]:
    out = []
    for run_dir in run_dirs:
        with open(run_dir / "summary.csv", newline="") as f:
            for row in csv.DictReader(f):
                for key, column in SUMMARY_COLUMNS.items():
                    if row.get(f"{key}_mean", "") == "":
                        continue  # a mode the method does not have (parallel needs a partition method)
                    out.append({"student": row["student"].removeprefix("zoo:"),
                                "student_acc": f"{100 * float(row['acc_student']):.2f}", "method": row["method"],
                                "seeds": row["seeds"], "column": column,
                                "mean": f"{100 * float(row[f'{key}_mean']):.2f}",
                                "std": f"{100 * float(row[f'{key}_std']):.2f}"})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="gkt transfer --multi run directories")
    args = parser.parse_args(argv)
    rows = collect(args.run_dirs)
    write_csv(HERE / "results.csv", rows)
    print(f"wrote {HERE / 'results.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
