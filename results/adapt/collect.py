"""Write this folder's results.csv from a ``gkt adapt --transfer`` run directory.

    uv run --frozen --no-sync python results/adapt/collect.py RUN_DIR

One row per method: Δtransf in points from weaker and from stronger teachers (``by_method.csv``: per seed
averaged over the pairs, then mean and sample std over seeds), the worst pair and the number of pairs below
−0.1 points (``pairs.csv``: each pair's mean over seeds), and the mean knowledge loss.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from gkt.core.io import write_csv

HERE = Path(__file__).resolve().parent


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mean_std(cell: str) -> tuple[str, str]:
    """``"+0.07 ± 0.01"`` → ``("0.07", "0.01")``."""
    mean, _, std = cell.partition(" ± ")
    return f"{float(mean):.2f}", f"{float(std or 0):.2f}"


def collect(run_dir: Path) -> list[dict[str, str]]:
    pairs = read(run_dir / "pairs.csv")
    out = []
    for row in read(run_dir / "by_method.csv"):
        rows = [p for p in pairs if p["method"] == row["method"]]
        deltas = {f"{p['teacher'].removeprefix('zoo:')} → {p['student'].removeprefix('zoo:')}":
                  100 * float(p["delta_transf"]) for p in rows}
        worst = min(deltas, key=deltas.get)
        weaker, stronger = mean_std(row["delta_transf_weaker_pp"]), mean_std(row["delta_transf_stronger_pp"])
        out.append({"method": row["method"], "weaker_pairs": row["weaker_teacher_pairs"], "weaker_mean": weaker[0],
                    "weaker_std": weaker[1], "stronger_pairs": row["stronger_teacher_pairs"],
                    "stronger_mean": stronger[0], "stronger_std": stronger[1], "worst": f"{deltas[worst]:.2f}",
                    "worst_pair": worst, "pairs_below": sum(d < -0.1 for d in deltas.values()),
                    "pairs": len(deltas), "knowledge_loss": f"{float(row['knowledge_loss_pp']):.2f}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    write_csv(HERE / "results.csv", collect(parser.parse_args().run_dir))


if __name__ == "__main__":
    main()
