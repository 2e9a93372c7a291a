"""A study's outputs: tables (CSV + Markdown) and figures from its records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gkt.core.io import atomic_path, write_csv
from gkt.reporting.study_figures import write_study_figures
from gkt.reporting.study_tables import best_settings, pair_means, paper_claims, success_table
from gkt.reporting.tables import format_table


def write_study_outputs(run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tables (CSV + Markdown) and figures from the store's records; returns the success table."""
    pairs = pair_means(records)
    table = success_table(pairs)
    for name, rows in (("runs.csv", records), ("pairs.csv", pairs), ("success_table.csv", table),
                       ("best_settings.csv", best_settings(pairs))):
        write_csv(run_dir / name, rows)
    with atomic_path(run_dir / "summary.md") as tmp:
        text = "## Transfer success per method\n\n" + format_table(table, markdown=True) + "\n"
        claims = paper_claims(table)
        if claims:
            text += "\n## The paper's claims (§5.1) at this study's scale\n\n" + format_table(claims, markdown=True) + "\n"
        tmp.write_text(text)
    write_study_figures(pairs, run_dir)
    return table
