"""Gather the demo's act 3 (``gkt improve``) into results/improve/demo.csv (the CSV ``results/render.py`` reads).

    uv run --frozen --no-sync python results/improve/collect.py DEMO_RUN_DIR
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = {"improve": "the six converged demo models", "improve-random": "six random-init teachers"}


def row(zoo: str, decision: dict) -> dict:
    cert = decision["certificate"] or {}
    chosen = decision["chosen"] or {}
    kept = sum(r["kept"] for r in decision["ranking"])
    return {"zoo": zoo, "teachers_kept": f"{kept} of {len(decision['ranking'])}",
            "candidates": len(decision["candidates"]), "chosen": chosen.get("label", ""),
            "selection_delta_pp": 100 * (chosen["selection_acc"] - chosen["selection_acc_before"]) if chosen else "",
            "certification_images": cert.get("samples", ""), "turned_right": cert.get("turned_right", ""),
            "turned_wrong": cert.get("turned_wrong", ""),
            "delta_acc_pp": 100 * cert["delta_acc"] if cert else "",
            "lower_bound_pp": 100 * cert["lower_bound"] if cert else "", "p_value": cert.get("p_value", ""),
            "decision": "accepted" if decision["accepted"] else "refused", "seconds": decision["seconds"]["total"]}


def main(run: str) -> None:
    rows = [row(zoo, json.loads((Path(run) / part / "decision.json").read_text())) for part, zoo in PARTS.items()]
    with open(HERE / "demo.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
