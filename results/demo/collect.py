"""Gather ``gkt demo`` runs into results/demo (the CSVs ``results/render.py`` reads).

    uv run --frozen --no-sync python results/demo/collect.py RUN_A RUN_B RUN_ALL

RUN_A is the default demo, RUN_B the demo with other seeds (``--seeds 3 --headroom-seeds 2 3``), RUN_ALL the
demo with four seeds in each act (``--seeds 0 1 2 3 --headroom-seeds 0 1 2 3``). Act 1 and act 2 tables come
from RUN_A; ``claims.csv`` holds both runs' verdicts; ``seed_claims.csv`` the verdicts of every seed and seed
pair of RUN_ALL (how much they depend on the seeds).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gkt.experiments.grid import STORE_NAME, ResultsStore
from gkt.reporting.study_tables import bootstrap_draws, pair_means, paper_claims, success_table

HERE = Path(__file__).resolve().parent
ACTS = {"1": "study", "2": "headroom"}
CONTROL_COLUMNS = {"student": "student", "ce fine-tuning (pp)": "ce_fine_tuning_pp", "own copy (kl) (pp)": "own_copy_pp",
                   "kl: mean over teachers (pp)": "kl_pp", "kl-dp: mean over teachers (pp)": "kl_dp_pp",
                   "kl-dp-unsup: mean over teachers (pp)": "kl_dp_unsup_pp"}
SEED_SETS = {"1": [(0,), (1,), (2,), (3,), (0, 1, 2, 3)], "2": [(0, 1), (2, 3), (0, 2), (1, 3), (0, 1, 2, 3)]}


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write(name: str, rows: Sequence[dict[str, Any]]) -> None:
    with open(HERE / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def seed_claims(run: Path) -> list[dict[str, Any]]:
    """Each act's claims judged on the transfers of each seed set of ``SEED_SETS``."""
    rows = []
    for act, part in ACTS.items():
        records = [r for r in ResultsStore(run / part / STORE_NAME).records() if not r.get("control")]
        for seeds in SEED_SETS[act]:
            chosen = [r for r in records if r["seed"] in seeds]
            table = success_table(pair_means(chosen), chosen)
            rows += [{"act": act, "seeds": " ".join(map(str, seeds)), **claim}
                     for claim in paper_claims(table, bootstrap_draws(chosen))]
    return rows


def main(run_a: Path, run_b: Path, run_all: Path) -> None:
    write("act1_success.csv", read(run_a / "study" / "success_table.csv"))
    write("act2_success.csv", read(run_a / "headroom" / "success_table.csv"))
    write("act2_controls.csv", [{new: row[old] for old, new in CONTROL_COLUMNS.items()}
                                for row in read(run_a / "headroom" / "controls.csv")])
    claims = []
    for run, label in ((run_a, "A"), (run_b, "B")):
        for act, part in ACTS.items():
            found = json.loads((run / part / "findings.json").read_text())
            claims += [{"run": label, "act": act, **claim} for claim in found["claims"]]
    write("claims.csv", claims)
    write("seed_claims.csv", seed_claims(run_all))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*map(Path, sys.argv[1:4]))
