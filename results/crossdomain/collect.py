"""Write this folder's results.csv and teachers.csv from a ``gkt crossdomain`` run directory.

    uv run --frozen --no-sync python results/crossdomain/collect.py RUN_DIR

results.csv, per method, in points: Δtransf over all pairs and per teacher (mean and sample std over seeds
of the seeds' pair means), the worst pair (seed mean), the number of pairs whose seed mean is below −0.1,
and the mean knowledge loss. teachers.csv: each teacher's accuracy on both domains before and after its
fine-tuning on the shifted domain.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from gkt.core.io import write_csv
from gkt.experiments.grid import STORE_NAME, ResultsStore

HERE = Path(__file__).resolve().parent


def mean_std(per_seed: dict[int, list[float]]) -> tuple[str, str]:
    means = [statistics.mean(v) for v in per_seed.values()]
    return f"{statistics.mean(means):.2f}", f"{statistics.stdev(means):.2f}" if len(means) > 1 else ""


def main(run_dir: Path) -> None:
    records = ResultsStore(run_dir / STORE_NAME).records()
    with open(run_dir / "domain_teachers.csv", newline="") as f:
        domain_teachers = list(csv.DictReader(f))
    # a fine-tuned teacher is named by its checkpoint's stem in the records
    names = {Path(t["checkpoint"]).name: t["source"].removeprefix("zoo:") for t in domain_teachers}
    teachers = [Path(t["checkpoint"]).name for t in domain_teachers]
    rows = []
    for method in sorted({r["method"] for r in records}, key=lambda m: (m == "kl-dp", m != "kl", m)):  # kl first, kl-dp last
        rs = [r for r in records if r["method"] == method]
        row: dict[str, str | int] = {"method": method}
        for name, keep in [("all", None), *[(names[t].replace("-", "_"), t) for t in teachers]]:
            per_seed: dict[int, list[float]] = defaultdict(list)
            for r in rs:
                if keep is None or r["teacher"] == keep:
                    per_seed[r["seed"]].append(100 * r["delta_transf"])
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(per_seed)
        per_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in rs:
            per_pair[(r["student"], r["teacher"])].append(100 * r["delta_transf"])
        pair_means = [statistics.mean(v) for v in per_pair.values()]
        row |= {"worst": f"{min(pair_means):.2f}", "pairs_below": sum(m < -0.1 for m in pair_means),
                "pairs": len(pair_means), "knowledge_loss": f"{100 * statistics.mean(r['knowledge_loss'] for r in rs):.2f}"}
        rows.append(row)
    write_csv(HERE / "results.csv", rows)
    columns = {"orig_before": "acc_orig_before", "orig_after": "acc_orig_after", "shifted_before": "acc_domain_before",
               "shifted_after": "acc_domain_after"}
    write_csv(HERE / "teachers.csv", [{"teacher": t["source"].removeprefix("zoo:"),
                                       **{k: f"{float(t[v]):.2f}" for k, v in columns.items()}} for t in domain_teachers])
    print(f"wrote {HERE / 'results.csv'} ({len(rows)} methods) and {HERE / 'teachers.csv'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
