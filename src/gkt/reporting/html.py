"""Tables for the terminal and Markdown, and self-contained HTML/Markdown reports of run directories.

A report opens with *Findings* (a study's ``findings.json``: generated sentences and the paper's claims
with intervals and verdicts; an analysis's best teacher per student), then the key figures, then compact
tables (rounded, the useful columns; long tables collapsed), then everything else collapsed.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gkt.core.errors import GktError
from gkt.core.io import atomic_path, parse_json, read_json
from gkt.core.limits import check_path
from gkt.reporting.study import findings_markdown
from gkt.reporting.tables import format_table, markdown_fence, markdown_text

# Tables shown first, in this order, when a run directory has them (others follow alphabetically).
PREFERRED_TABLES = ("models.csv", "candidates.csv", "teachers.csv", "certification_classes.csv", "success_table.csv", "controls.csv", "table4.csv", "gains.csv", "overview.csv",
                    "best_settings.csv", "pairs.csv", "zoo.csv", "metrics.csv", "benchmark.csv")
# Figures shown right after the findings (paper Figs. 4a, 4b, 7; an analysis's ρ_pos heatmap and gains chart).
KEY_FIGURES = ("fig4a_success_rate.png", "fig4b_delta_vs_acc.png", "fig7_gain_vs_loss.png", "rho_pos_heatmap.png",
               "gains.png")
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
}
SORT_KEYS = {"pairs.csv": ("method", "delta_transf")}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str, scale: float = 1) -> str:
    """A CSV cell for people: numbers rounded (1 decimal from 10 up, 2 from 1, else 3)."""
    try:
        value = float(text) * scale
    except (TypeError, ValueError):
        return text
    if math.isnan(value):
        return "–"
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def compact_rows(name: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """``rows`` of table ``name`` for people: its useful columns (intervals merged in), rounded, sorted."""
    stem = Path(name).name
    if stem in SORT_KEYS and rows and all(k in rows[0] for k in SORT_KEYS[stem]):
        first, second = SORT_KEYS[stem]
        rows = sorted(rows, key=lambda r: (r[first], float(r[second]) if r[second] else math.inf))
    columns = [c for c in COMPACT.get(stem, ()) if rows and c[1] in rows[0]]
    if len(columns) < 2:
        filled = [k for k in (rows[0] if rows else {}) if any(r[k] not in ("", None) for r in rows)]
        return [{k: _number(r[k]) for k in filled} for r in rows]
    out = []
    for r in rows:
        row = {}
        for header, key, scale in columns:
            cell = r[key] if scale is None else _number(r[key], scale)
            head, _, unit = key.rpartition("_")
            lo, hi = r.get(f"{head}_lo_{unit}"), r.get(f"{head}_hi_{unit}")
            if head and lo not in (None, "") and hi not in (None, ""):
                cell += f" [{_number(lo, scale)}, {_number(hi, scale)}]"
            row[header] = cell
        out.append(row)
    return out


def _collect(run_dir: Path) -> tuple[dict[str, Any], list[tuple[str, list[dict[str, str]]]], list[Path], str]:
    config = parse_json((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    csvs = sorted((p for p in run_dir.rglob("*.csv") if p.is_file()),  # never a pipe: reading it would hang
                  key=lambda p: (p.name not in PREFERRED_TABLES,
                                 PREFERRED_TABLES.index(p.name) if p.name in PREFERRED_TABLES else 0, str(p)))
    tables = [(str(p.relative_to(run_dir)), _read_csv(p)) for p in csvs if p.name not in HIDDEN_TABLES]
    tables = [(name, rows) for name, rows in tables if not _single_setting(name, rows)]
    figures = sorted((p for p in run_dir.rglob("*.png") if p.is_file()),
                     key=lambda p: (p.name not in KEY_FIGURES,
                                    KEY_FIGURES.index(p.name) if p.name in KEY_FIGURES else 0, str(p)))
    summary = (run_dir / "summary.md").read_text() if (run_dir / "summary.md").is_file() else ""
    return config, tables, figures, summary


def _single_setting(name: str, rows: list[dict[str, str]]) -> bool:
    """A study's ``best_settings.csv`` without a grid repeats the success table."""
    return Path(name).name == "best_settings.csv" and len(rows) == len({r.get("method") for r in rows})


def _findings(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A study's generated sentences and claims, or an analysis's best teacher per student."""
    if (run_dir / "findings.json").is_file():
        found = parse_json((run_dir / "findings.json").read_text())
        return found["sentences"], found["claims"]
    if (run_dir / "overview.csv").is_file():
        sentences = [f"{r['student']} ({_number(r['acc'], 100)}% test accuracy): the teacher with the most "
                     f"complementary knowledge is {r['best_teacher']} — right where the student is wrong on "
                     f"{_number(r['rho_pos'], 100)}% of the test samples (ρ_pos; Δacc {_number(r['delta_acc'], 100)} pp); "
                     f"some teacher is on {_number(r['any_teacher_rho_pos'], 100)}%."
                     for r in _read_csv(run_dir / "overview.csv")]
        return sentences, []
    return [], []


def _html_table(rows: list[dict[str, str]], verdict_column: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = ""
    for r in rows:
        cells = ""
        for k, v in r.items():
            css = f" class='{v.split()[0]}'" if k == verdict_column else ""
            cells += f"<td{css}>{html.escape(str(v))}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path, run_dir: Path) -> str:
    rel = str(path.relative_to(run_dir))
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<figure><img alt='{html.escape(rel)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(rel)}" \
           "</figcaption></figure>"


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
    if not (tables or figures):
        raise GktError(f"{run_dir} has no tables or figures to report")
    title = title or f"gkt {config.get('command', 'run')} — {run_dir.name}"
    sentences, claims = _findings(run_dir)
    md = [f"# {markdown_text(title)}\n"]
    body = [f"<h1>{html.escape(title)}</h1>"]
    status = config.get("status")
    if status == "running" and config.get("pid") == os.getpid():
        status = None  # the run writes its own report as it ends
    if status not in (None, "ok"):  # a run that did not finish: its tables are partial
        note = (f"This run is not complete (status: {status}{', ' + str(config['error']) if config.get('error') else ''}"
                "): its tables and figures are partial.")
        md.append(f"> **{markdown_text(note)}**\n")
        body.append(f"<p class='warning'><b>{html.escape(note)}</b></p>")
    if sentences or claims:
        md.append(findings_markdown(sentences, claims))
    elif summary:
        md.append(summary)
    if sentences or claims:
        body.append("<h2>Findings</h2>")
        if claims:
            body.append("<p>The paper's claims at this run's scale: <b>holds</b> / <b>fails</b> when the whole 95% "
                        "interval lies on one side of the threshold, else <b>undecided at this scale</b>.</p>")
            body.append(_html_table([{"paper's claim": c["paper_claim"], "measured": c["measured"],
                                       "95% interval": c["interval_95"], "verdict": c["verdict"]} for c in claims],
                                     verdict_column="verdict"))
        body.append("<ul class='findings'>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
    key = [f for f in figures if f.name in KEY_FIGURES]
    if key:
        body.append("<h2>Key figures</h2><div class='figures'>" + "".join(_image(f, run_dir) for f in key) + "</div>")
    body.append("<h2>Tables</h2>")
    for name, rows in tables:
        shown = compact_rows(name, rows[:MAX_TABLE_ROWS] if Path(name).name not in SORT_KEYS else rows)[:MAX_TABLE_ROWS]
        more = f" (first {MAX_TABLE_ROWS} of {len(rows)} rows; all in {name})" if len(rows) > MAX_TABLE_ROWS else ""
        md += [f"\n## {markdown_text(name + more)}\n",
               format_table(shown, markdown=True) if shown else "(empty)"]
        if shown:
            is_open = " open" if len(rows) <= OPEN_TABLE_ROWS and Path(name).name in PREFERRED_TABLES else ""
            body.append(f"<details{is_open}><summary>{html.escape(name)} — {len(rows)} rows{html.escape(more)}</summary>"
                        f"{_html_table(shown)}</details>")
    others = [f for f in figures if f.name not in KEY_FIGURES]
    for fig in figures:
        rel = str(fig.relative_to(run_dir))
        md.append(f"\n## {markdown_text(rel)}\n\n![{markdown_text(rel)}](<{quote(rel)}>)")
    if others:
        body.append(f"<details><summary>More figures ({len(others)})</summary><div class='figures'>"
                    + "".join(_image(f, run_dir) for f in others) + "</div></details>")
    settings = {k: v for k, v in config.items() if v not in (None, [], {})}
    md.append("\n## Configuration\n\n" + markdown_fence(json.dumps(settings, indent=2, default=str)) + "\n")
    body.append(f"<details><summary>Configuration</summary><pre>{html.escape(json.dumps(settings, indent=2, default=str))}"
                "</pre></details>")
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    with atomic_path(html_path) as tmp:
        tmp.write_text(page)
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md))
    return html_path, md_path
