"""Tables for the terminal and Markdown, and self-contained HTML/Markdown reports of run directories.

A report opens with *Findings* in the units the terminal prints (:mod:`gkt.reporting.findings`: a study's
generated sentences and the paper's claims with intervals and verdicts, a transfer's Δtransf in points, an
analysis's best teacher per student, ...), then the key figures, then compact tables (rounded, the useful
columns, fractions as % or points; long tables collapsed; an undefined cell says why), then everything else
collapsed. The HTML page is a jinja2 template (``templates/report.html.j2``, autoescaped) with its figures
inlined; the Markdown file links the figures beside it.
"""

from __future__ import annotations

import base64
import json
import math
import os
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from gkt.core.errors import GktError
from gkt.core.io import atomic_path, parse_json, read_csv, read_json
from gkt.core.limits import check_path
from gkt.reporting.findings import number, run_findings
from gkt.reporting.study import findings_markdown
from gkt.reporting.tables import format_table, markdown_fence, markdown_text

# Tables shown first, in this order, when a run directory has them (others follow alphabetically).
PREFERRED_TABLES = ("models.csv", "candidates.csv", "teachers.csv", "certification_classes.csv", "success_table.csv", "controls.csv", "table4.csv", "gains.csv", "overview.csv",
                    "best_settings.csv", "pairs.csv", "zoo.csv", "metrics.csv", "benchmark.csv")
# Figures shown right after the findings (paper Figs. 4a, 4b, 7; an analysis's ρ_pos heatmap and gains chart).
# A transfer's curves, a sequential chain (Fig. 11), adapt/crossdomain's Figs. 9/10, the KDEP benchmark's plot.
KEY_FIGURES = ("fig4a_success_rate.png", "fig4b_delta_vs_acc.png", "fig7_gain_vs_loss.png", "rho_pos_heatmap.png",
               "gains.png", "plot.png", "chain.png", "fig9_delta_transf_vs_delta_acc.png",
               "fig10_crossdomain_delta_transf_vs_delta_acc.png", "accuracy_vs_time.png")
# Tables that the findings already summarise or that only tools read.
HIDDEN_TABLES = ("runs.csv", "claims.csv")
MAX_TABLE_ROWS = 40
OPEN_TABLE_ROWS = 12  # longer tables, and tables not in PREFERRED_TABLES, start collapsed

# Compact views of known tables: (header, column, scale); a column's 95% interval is shown beside it when
# the table has ``<stem>_lo_<unit>`` / ``<stem>_hi_<unit>`` columns.
COMPACT: dict[str, tuple[tuple[str, str, float | None], ...]] = {
    "success_table.csv": (("method", "method", 1), ("pairs", "pairs", 1), ("Δtransf > 0 (% of pairs)", "success_%", 1),
                          ("mean Δtransf (pp)", "mean_delta_transf_pp", 1), ("worst Δtransf (pp)", "min_delta_transf_pp", 1),
                          ("mean gain (pp)", "mean_gain_pp", 1), ("mean loss (pp)", "mean_loss_pp", 1),
                          ("clear gain %", "clear_gain_%", 1), ("clear loss %", "clear_loss_%", 1),
                          ("seed std (pp)", "seed_std_pp", 1)),
    "pairs.csv": (("teacher", "teacher", 1), ("student", "student", 1), ("method", "method", 1),
                  ("Δtransf (pp)", "delta_transf", 100), ("gain (pp)", "knowledge_gain", 100),
                  ("loss (pp)", "knowledge_loss", 100), ("student acc %", "acc_student_before", 100),
                  ("teacher acc %", "acc_teacher", 100), ("seeds", "seeds", 1),
                  ("ρ_pos %", "rho_pos", 100), ("ρ_neg %", "rho_neg", 100), ("Δacc (pp)", "delta_acc", 100),
                  ("top classes", "top_classes", 1)),
    "gains.csv": (("teacher", "teacher", 1), ("acc %", "acc_teacher", 100), ("Δacc (pp)", "delta_acc", 100),
                  ("ρ_pos %", "rho_pos", 100), ("ρ_neg %", "rho_neg", 100), ("× random", "rho_pos_vs_random", 1),
                  ("entropy", "entropy", 1), ("top classes", "top_classes", 1)),
    "overview.csv": (("student", "student", 1), ("acc %", "acc", 100), ("best teacher", "best_teacher", 1),
                     ("ρ_pos %", "rho_pos", 100), ("Δacc (pp)", "delta_acc", 100),
                     ("all teachers ρ_pos %", "any_teacher_rho_pos", 100)),
    "candidates.csv": (("stage", "stage", 1), ("teachers", "teachers", 1), ("method", "method", 1),
                       ("lr", "lr", None), ("epochs", "epochs", 1), ("selection acc %", "selection_acc", 100),
                       ("Δacc vs original (pp)", "selection_delta", 100), ("chosen", "chosen", 1),
                       ("error", "error", 1)),
    "teachers.csv": (("teacher", "spec", 1), ("acc %", "acc", 100), ("ρ_pos %", "rho_pos", 100),
                     ("ρ_neg %", "rho_neg", 100), ("random ρ_pos %", "random_rho_pos", 100), ("kept", "kept", 1)),
    "certification_classes.csv": (("class", "class", 1), ("images", "images", 1), ("acc before %", "acc_before", 100),
                                  ("acc after %", "acc_after", 100), ("turned right", "turned_right", 1),
                                  ("turned wrong", "turned_wrong", 1), ("Δacc (pp)", "delta_acc", 100)),
    "metrics.csv": (("epoch", "epoch", 1), ("train loss", "train_loss", 1), ("acc %", "acc", 100),
                    ("Δtransf (pp)", "delta_transf", 100), ("gain (pp)", "knowledge_gain", 100),
                    ("loss (pp)", "knowledge_loss", 100), ("ρ_pos %", "rho_pos", 100), ("ρ_neg %", "rho_neg", 100),
                    ("s", "seconds", 1)),
    "steps.csv": (("step", "step", 1), ("teacher", "teacher", 1), ("acc %", "acc", 100),
                  ("Δtransf (pp)", "delta_transf", 100), ("gain (pp)", "knowledge_gain", 100),
                  ("loss (pp)", "knowledge_loss", 100), ("Δ vs previous (pp)", "delta_prev", 100)),
    "single.csv": (("teacher", "teacher", 1), ("teacher acc %", "acc_teacher", 100), ("acc %", "acc", 100),
                   ("Δtransf (pp)", "delta_transf", 100), ("gain (pp)", "knowledge_gain", 100),
                   ("loss (pp)", "knowledge_loss", 100)),
    "summary.csv": (("student", "student", 1), ("acc %", "acc_student", 100), ("method", "method", 1),
                    ("seeds", "seeds", 1), ("single mean Δtransf (pp)", "single_mean_mean", 100),
                    ("sequential (pp)", "sequential_mean", 100), ("parallel (pp)", "parallel_mean", 100),
                    ("soup (pp)", "soup_mean", 100), ("seq − best single (pp)", "sequential_minus_best_single_mean", 100)),
    "random_baseline.csv": (("random teacher", "random_teacher", 1), ("student", "student", 1),
                            ("ρ_pos %", "rho_pos", 100), ("samples", "samples", 1)),
}
SORT_KEYS = {"pairs.csv": ("method", "delta_transf")}
# Teacher × student matrices of fractions, shown in the terminal's units.
MATRICES = {"rho_pos.csv": (100, "ρ_pos, %"), "rho_neg.csv": (100, "ρ_neg, %"), "delta_acc.csv": (100, "Δacc, pp")}
# Why a column's cell can be undefined (NaN, or infinite for a ratio), said in the cell.
UNDEFINED = {"transfer_rate": "the teacher has no positive flips there", "acc_before": "no sample of this class",
             "acc_after": "no sample of this class", "delta_acc": "no sample of this class",
             "rho_pos_vs_random": "no random-init teacher is right where the student is wrong",
             "entropy": "no positive flips", "share_top": "no positive flips", "classes_holding": "no positive flips",
             "spearman": "fewer than 3 pairs or a constant side"}


def _undefined(column: str) -> str:
    reason = next((why for key, why in UNDEFINED.items() if column.startswith(key) or key in column), None)
    return f"n/a: {reason}" if reason else "n/a: undefined for this row"


def _number(text: str, scale: float = 1, column: str = "") -> str:
    """A CSV cell for people: numbers rounded (1 decimal from 10 up, 2 from 1, else 3; fractions shown as %
    or points (``scale`` 100) to 2 decimals, as the terminal prints them; never ``-0``), an
    undefined one (NaN, ±inf) as ``n/a`` with the reason its column has."""
    try:
        value = float(text) * scale
    except (TypeError, ValueError):
        return text
    if not math.isfinite(value):
        return _undefined(column)
    if scale == 100:  # a fraction as % or points: two decimals, as the terminal prints them
        return number(value)
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return number(value, 1 if abs(value) >= 10 else 2 if abs(value) >= 1 else 3)


def compact_rows(name: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """``rows`` of table ``name`` for people: its useful columns (intervals merged in), rounded, sorted."""
    stem = Path(name).name
    if stem in SORT_KEYS and rows and all(k in rows[0] for k in SORT_KEYS[stem]):
        first, second = SORT_KEYS[stem]
        rows = sorted(rows, key=lambda r: (r[first], float(r[second]) if r[second] else math.inf))
    columns = [c for c in COMPACT.get(stem, ()) if rows and c[1] in rows[0]]
    if len(columns) < 2:
        filled = [k for k in (rows[0] if rows else {}) if any(r[k] not in ("", None) for r in rows)]
        scale = MATRICES.get(stem, (1, ""))[0]
        return [{k: _number(r[k], scale if i else 1, k) for i, k in enumerate(filled)} for r in rows]
    out = []
    for r in rows:
        row = {}
        for header, key, scale in columns:
            cell = r[key] if scale is None else _number(r[key], scale, key)
            head, _, unit = key.rpartition("_")
            lo, hi = r.get(f"{head}_lo_{unit}"), r.get(f"{head}_hi_{unit}")
            if head and lo not in (None, "") and hi not in (None, ""):
                cell += f" [{_number(lo, scale, key)}, {_number(hi, scale, key)}]"
            row[header] = cell
        out.append(row)
    return out


def _collect(run_dir: Path) -> tuple[dict[str, Any], list[tuple[str, list[dict[str, str]]]], list[Path], str]:
    config = parse_json((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    csvs = sorted((p for p in run_dir.rglob("*.csv") if p.is_file()),  # never a pipe: reading it would hang
                  key=lambda p: (p.name not in PREFERRED_TABLES,
                                 PREFERRED_TABLES.index(p.name) if p.name in PREFERRED_TABLES else 0, str(p)))
    tables = [(str(p.relative_to(run_dir)), read_csv(p)) for p in csvs if p.name not in HIDDEN_TABLES]
    tables = [(name, rows) for name, rows in tables if not _single_setting(name, rows)]
    figures = sorted((p for p in run_dir.rglob("*.png") if p.is_file()),
                     key=lambda p: (p.name not in KEY_FIGURES,
                                    KEY_FIGURES.index(p.name) if p.name in KEY_FIGURES else 0, str(p)))
    summary = (run_dir / "summary.md").read_text() if (run_dir / "summary.md").is_file() else ""
    return config, tables, figures, summary


def _single_setting(name: str, rows: list[dict[str, str]]) -> bool:
    """A study's ``best_settings.csv`` without a grid repeats the success table."""
    return Path(name).name == "best_settings.csv" and len(rows) == len({r.get("method") for r in rows})


def _figure(path: Path, run_dir: Path) -> dict[str, str]:
    return {"name": str(path.relative_to(run_dir)), "data": base64.b64encode(path.read_bytes()).decode()}


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("gkt.reporting", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2")


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222;line-height:1.4}"
         "table{border-collapse:collapse;font-size:13px;margin-bottom:1em}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
         "td:first-child,th:first-child{text-align:left}"
         "td.holds{background:#d9f2d9}td.fails{background:#f8d4d4}td.undecided{background:#eee}"
         ".figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:12px}"
         "figure{margin:0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:11px;color:#666}"
         "details{margin:0.6em 0}summary{cursor:pointer;font-weight:bold}"
         "pre{background:#f6f6f6;padding:8px;overflow:auto}ul.findings li{margin:0.25em 0}")


def run_status(run_dir: str | Path) -> str | None:
    """How a run ended, from its ``config.json`` (``ok``, ``failed``, ``interrupted``, ``running``; None: not
    recorded)."""
    try:
        config = read_json(Path(run_dir) / "config.json")
    except (OSError, ValueError):
        return None
    return config.get("status") if isinstance(config, dict) else None


RUN_DIR_HINT = "give a directory a gkt command wrote (it prints 'run directory: ...')"


def check_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a gkt run directory; anything else (an empty path, a data folder, a file) is
    refused before anything in it is read or written."""
    text = str(run_dir)
    if not text.strip():
        raise GktError(f"RUN_DIR is empty; {RUN_DIR_HINT}")
    check_path(text, "RUN_DIR")
    path = Path(text)
    if not path.is_dir():
        problem = "not a directory" if path.exists() else "no such directory"
        raise GktError(f"RUN_DIR {text}: {problem}; {RUN_DIR_HINT}")
    config_path = path / "config.json"
    try:
        config = read_json(config_path) if config_path.is_file() else None
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("command"), str):
        raise GktError(f"RUN_DIR {text}: not a gkt run directory (no config.json written by gkt); "
                       f"{RUN_DIR_HINT}")
    return config


def write_report(run_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """``report.html`` (self-contained: figures inlined) and ``report.md`` for any gkt run directory;
    ``title`` defaults to the command and the directory's name."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GktError(f"{run_dir} is not a run directory")
    config, tables, figures, summary = _collect(run_dir)
    sentences, claims = run_findings(run_dir)
    if not (tables or figures or sentences):
        raise GktError(f"{run_dir} has no findings, tables or figures to report")
    title = title or f"gkt {config.get('command', 'run')} — {run_dir.name}"
    md = [f"# {markdown_text(title)}\n"]
    status, note = config.get("status"), None
    if status == "running" and config.get("pid") == os.getpid():
        status = None  # the run writes its own report as it ends
    if status not in (None, "ok"):  # a run that did not finish: its tables are partial
        note = (f"This run is not complete (status: {status}{', ' + str(config['error']) if config.get('error') else ''}"
                "): its tables and figures are partial.")
        md.append(f"> **{markdown_text(note)}**\n")
    if sentences or claims:
        md.append(findings_markdown(sentences, claims))
    elif summary:
        md.append(summary)
    key = [f for f in figures if f.name in KEY_FIGURES]
    others = [f for f in figures if f.name not in KEY_FIGURES]
    if key:
        md.append("\n## Key figures\n")
    for fig in key:
        rel = str(fig.relative_to(run_dir))
        md.append(f"![{markdown_text(rel)}](<{quote(rel)}>)\n")
    shown_tables = []
    for name, rows in tables:
        shown = compact_rows(name, rows[:MAX_TABLE_ROWS] if Path(name).name not in SORT_KEYS else rows)[:MAX_TABLE_ROWS]
        unit = MATRICES.get(Path(name).name, (1, ""))[1]
        label = f"{name} ({unit})" if unit else name
        more = f" (first {MAX_TABLE_ROWS} of {len(rows)} rows; all in {name})" if len(rows) > MAX_TABLE_ROWS else ""
        md += [f"\n## {markdown_text(label + more)}\n", format_table(shown, markdown=True) if shown else "(empty)"]
        if shown:
            shown_tables.append({"name": label, "count": len(rows), "more": more, "rows": shown,
                                 "open": len(rows) <= OPEN_TABLE_ROWS and Path(name).name in PREFERRED_TABLES})
    for fig in others:
        rel = str(fig.relative_to(run_dir))
        md.append(f"\n## {markdown_text(rel)}\n\n![{markdown_text(rel)}](<{quote(rel)}>)")
    settings = json.dumps({k: v for k, v in config.items() if v not in (None, [], {})}, indent=2, default=str)
    md.append("\n## Configuration\n\n" + markdown_fence(settings) + "\n")
    page = _template().render(
        title=title, style=STYLE, note=note, sentences=sentences, settings=settings, tables=shown_tables,
        claims=[{"paper's claim": c["paper_claim"], "measured": c["measured"], "95% interval": c["interval_95"],
                 "verdict": c["verdict"]} for c in claims],
        key_figures=[_figure(f, run_dir) for f in key], other_figures=[_figure(f, run_dir) for f in others])
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    with atomic_path(html_path) as tmp:
        tmp.write_text(page)
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md))
    return html_path, md_path
