"""A study's outputs: findings, tables (CSV + Markdown) and figures from its records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gkt.core.io import atomic_path, write_csv, write_json
from gkt.reporting.study_figures import write_study_figures
from gkt.reporting.study_tables import (
    best_settings,
    bootstrap_draws,
    control_findings,
    control_table,
    findings,
    pair_means,
    paper_claims,
    success_table,
)
from gkt.reporting.tables import format_table, markdown_text

# success_table.csv's columns in summary.md (the CSV keeps them all)
SUMMARY_COLUMNS = ("method", "pairs", "success_%", "success_lo_%", "success_hi_%", "mean_delta_transf_pp",
                   "mean_delta_transf_lo_pp", "mean_delta_transf_hi_pp", "min_delta_transf_pp", "clear_gain_%",
                   "clear_loss_%", "seed_std_pp")


def findings_markdown(sentences: list[str], claims: list[dict[str, Any]]) -> str:
    """The ``Findings`` section: generated sentences, then the paper's claims with intervals and verdicts."""
    text = "## Findings\n\n" + "".join(f"- {markdown_text(s)}\n" for s in sentences)
    if claims:
        text += ("\nThe paper's claims (§5.1) at this study's scale — *holds* / *fails* when the whole 95% interval "
                 "is on one side of the threshold, else *undecided at this scale*:\n\n"
                 + format_table(claims, markdown=True) + "\n")
    return text


def write_study_outputs(run_dir: Path, records: list[dict[str, Any]],
                        controls: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Findings, tables (CSV + Markdown) and figures from the store's records; returns the success table.
    ``findings.json`` (sentences + claims) is what a report opens with. ``controls``: runs of a student
    against itself (``control`` names each), compared with the transfers in ``controls.csv`` and the findings."""
    pairs = pair_means(records)
    table = success_table(pairs, records)
    claims = paper_claims(table, bootstrap_draws(records))
    sentences = findings(pairs, table)
    if controls:
        sentences += control_findings(controls, pairs)
        write_csv(run_dir / "controls.csv", control_table(controls, pairs))
    for name, rows in (("runs.csv", records), ("pairs.csv", pairs), ("success_table.csv", table),
                       ("best_settings.csv", best_settings(pairs)), ("claims.csv", claims)):
        write_csv(run_dir / name, rows)
    write_json(run_dir / "findings.json", {"sentences": sentences, "claims": claims})
    with atomic_path(run_dir / "summary.md") as tmp:
        shown = [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k in SUMMARY_COLUMNS}
                 for row in table]
        tmp.write_text(findings_markdown(sentences, claims) + "\n## Transfer success per method\n\n"
                       + format_table(shown, markdown=True) + "\n")
    write_study_figures(pairs, run_dir)
    return table
