"""Tables for the terminal and Markdown, and self-contained HTML/Markdown reports of run directories."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from gkt.core.errors import GktError
from gkt.core.io import atomic_path
from gkt.reporting.tables import format_table, numeric_text

# Tables shown first, in this order, when a run directory has them (others follow alphabetically).
PREFERRED_TABLES = ("success_table.csv", "table4.csv", "gains.csv", "overview.csv", "best_settings.csv",
                    "pairs.csv", "zoo.csv", "metrics.csv", "benchmark.csv")


MAX_TABLE_ROWS = 40


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _collect(run_dir: Path) -> tuple[dict[str, Any], list[tuple[str, list[dict[str, str]]]], list[Path], str]:
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    csvs = sorted(run_dir.rglob("*.csv"), key=lambda p: (p.name not in PREFERRED_TABLES,
                                                         PREFERRED_TABLES.index(p.name) if p.name in PREFERRED_TABLES
                                                         else 0, str(p)))
    tables = [(str(p.relative_to(run_dir)), _read_csv(p)) for p in csvs if p.name != "runs.csv"]
    figures = sorted(run_dir.rglob("*.png"))
    summary = (run_dir / "summary.md").read_text() if (run_dir / "summary.md").is_file() else ""
    return config, tables, figures, summary


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """``report.html`` (self-contained: figures inlined) and ``report.md`` for any gkt run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GktError(f"{run_dir} is not a run directory")
    config, tables, figures, summary = _collect(run_dir)
    if not (tables or figures):
        raise GktError(f"{run_dir} has no tables or figures to report")
    title = f"gkt {config.get('command', 'run')} — {run_dir.name}"
    md = [f"# {title}\n", summary]
    body = [f"<h1>{html.escape(title)}</h1>"]
    if summary:
        body.append(f"<pre class='summary'>{html.escape(summary)}</pre>")
    for name, rows in tables:
        shown = [{k: numeric_text(v) for k, v in r.items()} for r in rows[:MAX_TABLE_ROWS]]
        more = f" (first {MAX_TABLE_ROWS} of {len(rows)} rows)" if len(rows) > MAX_TABLE_ROWS else ""
        md += [f"\n## {name}{more}\n", format_table(shown, markdown=True) if shown else "(empty)"]
        if shown:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in shown[0])
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
                            for r in shown)
            body.append(f"<h2>{html.escape(name)}{more}</h2><table><tr>{head}</tr>{cells}</table>")
    for fig in figures:
        rel = str(fig.relative_to(run_dir))
        md.append(f"\n## {rel}\n\n![{rel}]({rel})")
        data = base64.b64encode(fig.read_bytes()).decode()
        body.append(f"<h2>{html.escape(rel)}</h2><img alt='{html.escape(rel)}' src='data:image/png;base64,{data}'>")
    settings = {k: v for k, v in config.items() if v not in (None, [], {})}
    md.append("\n## Configuration\n\n```json\n" + json.dumps(settings, indent=2, default=str) + "\n```\n")
    body.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
             "img{max-width:100%;border:1px solid #ddd}pre{background:#f6f6f6;padding:8px;overflow:auto}")
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    with atomic_path(html_path) as tmp:
        tmp.write_text(page)
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md))
    return html_path, md_path
