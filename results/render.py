"""Write every measured table of the documentation from the CSV files in ``results/``.

    uv run --frozen --no-sync python results/render.py           # rewrite the marked blocks in place
    uv run --frozen --no-sync python results/render.py --check   # exit 1 where a block differs from its CSV

A table lives between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md, docs/*.md or
results/*/README.md; NAME is a key of :data:`TABLES`, which says which CSV it comes from and how each cell is
formatted. Numbers are never typed into the documents by hand: change the CSV (by rerunning the command in
that folder's README.md), then run this script. ``tests/test_docs.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any

RESULTS = Path(__file__).resolve().parent
ROOT = RESULTS.parent
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)
MINUS = re.compile(r"(?<![\w.])-(?=\d)")  # a negative number's hyphen (not a range such as 5-9)

NUMERIC = tuple("eEfFgG%")
Row = dict[str, str]


def read_rows(name: str) -> list[Row]:
    path = RESULTS / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing: rerun the command in {path.parent / 'README.md'}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fill(template: str, row: Row) -> str:
    """``template`` formatted with the row's values (numbers as floats). A template may list alternatives
    separated by ``||``: the first whose fields are all non-empty is used; ``–`` when none is."""
    for alternative in template.split("||"):
        fields = {name: spec for _, name, spec, _ in Formatter().parse(alternative) if name}
        if all(row.get(name, "") != "" for name in fields):
            # a field with a numeric format (".2f", "+.3f") is read as a number, others stay text
            values = {name: float(row[name]) if spec[-1:] in NUMERIC else row[name]
                      for name, spec in fields.items()}
            return MINUS.sub("−", alternative.format(**values))
    return "–"


@dataclass(frozen=True)
class Table:
    """A Markdown table from one CSV: ``columns`` are ``(header, template)``; with ``pivot`` =
    ``(field, values)`` the CSV is long (one row per value of ``field``) and each value becomes a column
    filled with ``cell``, rows being grouped by the first column's template."""

    csv: str
    columns: Sequence[tuple[str, str]]
    pivot: tuple[str, Sequence[str]] | None = None
    cell: str = ""
    pivot_header: str = "`{}`"
    rows: Callable[[list[Row]], list[Row]] = field(default=lambda rows: rows)

    def render(self) -> str:
        rows = self.rows(read_rows(self.csv))
        headers = [h for h, _ in self.columns]
        lines: list[list[str]] = []
        if self.pivot is None:
            lines = [[fill(t, row) for _, t in self.columns] for row in rows]
        else:
            key_field, values = self.pivot
            headers += [self.pivot_header.format(v) for v in values]
            groups: dict[tuple[str, ...], dict[str, Row]] = {}
            for row in rows:
                groups.setdefault(tuple(fill(t, row) for _, t in self.columns), {})[row[key_field]] = row
            for key, by_value in groups.items():
                lines.append([*key, *(fill(self.cell, by_value[v]) if v in by_value else "–" for v in values)])
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines]) + "\n"


def kdep_summary(rows: list[Row]) -> list[Row]:
    """Per arm, in first-seen order: accuracy mean ± sample std over seeds per task and of the per-seed task
    mean, mean pre-training seconds (what ``gkt kdep benchmark`` prints)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        tasks = list(dict.fromkeys(r["task"] for r in mine))
        seeds = list(dict.fromkeys(r["seed"] for r in mine))
        entry = {"method": method, "pretrain_samples": mine[0]["pretrain_samples"],
                 "pretrain_s": f"{statistics.fmean(float(r['pretrain_s']) for r in mine):.1f}"}
        per_task = {t: [100 * float(r["acc"]) for r in mine if r["task"] == t] for t in tasks}
        per_seed = [statistics.fmean(100 * float(r["acc"]) for r in mine if r["seed"] == s) for s in seeds]
        for name, values in [*per_task.items(), ("mean", per_seed)]:
            key = re.sub(r"\W+", "_", name).strip("_")
            entry[f"{key}_mean"] = f"{statistics.fmean(values):.2f}"
            entry[f"{key}_std"] = f"{statistics.stdev(values):.2f}" if len(values) > 1 else ""  # none for one seed
        entry["seeds"] = str(len(seeds))
        out.append(entry)
    return out


def pm(prefix: str = "", sign: str = "+") -> str:
    """The template of ``mean ± std`` from the fields ``{prefix}mean`` and ``{prefix}std``."""
    return f"{{{prefix}mean:{sign}.2f}} ± {{{prefix}std:.2f}}"


TRANSFER_PAIR = "{direction}: `{teacher}` ({teacher_acc:.2f}) → `{student}` ({student_acc:.2f})"
SWEEP_CELL = "||".join([f"{pm('kl_dp_')} ({{kl_mean:+.2f}})", pm("kl_dp_"), "{kl_dp_mean:+.2f} (1 seed)"])
# the layout of a table that has an earlier version beside it (the same columns for both CSV files)
KDEP_BENCHMARK: dict[str, Any] = {
    "columns": [("arm", "{method}"), ("seeds", "{seeds}"), ("pre-train samples", "{pretrain_samples:.0f}"),
                ("pre-train s", "{pretrain_s:.1f}"),
                ("fmnist[5-9]", pm("fmnist_5_9_", "") + "||{fmnist_5_9_mean:.2f}"),
                ("digits", pm("digits_", "") + "||{digits_mean:.2f}"), ("mean", pm("mean_", "") + "||{mean_mean:.2f}")],
    "rows": kdep_summary}
ADAPT_DIGITS = [("method", "`{method}`"),
                ("pairs: weaker / stronger teacher", "{weaker_pairs:.0f} / {stronger_pairs:.0f}"),
                ("Δtransf, weaker teacher", pm("weaker_")), ("Δtransf, stronger teacher", pm("stronger_")),
                ("worst pair", "{worst:+.2f} ({worst_pair})"), ("pairs < −0.1", "{pairs_below:.0f}/{pairs:.0f}"),
                ("knowledge loss", "{knowledge_loss:.2f}")]
TRANSFER_METHODS: dict[str, Any] = {
    "columns": [("teacher (acc) → student (acc)", TRANSFER_PAIR)],
    "pivot": ("method", ["kl", "kl-dp", "kl-dp-unsup", "xekl-mcl"]), "cell": pm()}

# A study's success_table.csv (gkt demo, gkt study): rates and means with their 95% bootstrap intervals.
DEMO_SUCCESS = [("method", "`{method}`"), ("pairs", "{pairs}"),
                ("Δtransf > 0 (% of pairs)", "{success_%:.1f} [{success_lo_%:.1f}, {success_hi_%:.1f}]"),
                ("mean Δtransf (pp)", "{mean_delta_transf_pp:+.3f} [{mean_delta_transf_lo_pp:+.3f}, "
                                      "{mean_delta_transf_hi_pp:+.3f}]"),
                ("worst pair (pp)", "{min_delta_transf_pp:+.2f}"),
                ("clear gain / loss (% of pairs)", "{clear_gain_%:.1f} / {clear_loss_%:.1f}")]


TABLES: dict[str, Table] = {
    "kdep-benchmark": Table("kdep-benchmark/results.csv", **KDEP_BENCHMARK),
    "kdep-benchmark-6f11b2e": Table("kdep-benchmark/earlier-6f11b2e.csv", **KDEP_BENCHMARK),
    "kdep-benchmark-earlier": Table(
        "kdep-benchmark/earlier-8020f62.csv",
        [("arm", "{method}"), ("seeds", "{seeds}"), ("pre-train samples", "{pretrain_samples:.0f}"),
         ("pre-train s", "{pretrain_s:.1f}"), ("fmnist[5-9]", pm("fmnist_5_9_", "")), ("digits", pm("digits_", "")),
         ("mean", pm("mean_", ""))]),
    "transfer-lr-sweep": Table(
        "transfer-lr-sweep/results.csv", [("lr", "{lr}")],
        pivot=("column", ["kl weak→strong", "kl-dp weak→strong", "kl strong→weak", "kl-dp strong→weak"]),
        cell="{delta_transf:+.2f}", pivot_header="{}"),
    "transfer-methods": Table("transfer-methods/results.csv", **TRANSFER_METHODS),
    "transfer-methods-earlier": Table("transfer-methods/earlier-f86ffa4.csv", **TRANSFER_METHODS),
    "multi-teacher": Table(
        "multi-teacher/results.csv",
        [("student", "`{student}`"), ("acc", "{student_acc:.2f}"), ("method", "`{method}`")],
        pivot=("column", ["single mean", "single min", "single max", "sequential", "parallel", "soup",
                          "seq − best single"]), cell=pm(), pivot_header="{}"),
    "adapt-digits": Table("adapt/results.csv", ADAPT_DIGITS),
    "adapt-digits-earlier": Table("adapt/earlier-f86ffa4.csv", ADAPT_DIGITS),
    "crossdomain-teachers": Table(
        "crossdomain/teachers.csv",
        [("teacher", "`{teacher}`"), ("original domain: before → after", "{orig_before:.2f} → {orig_after:.2f}"),
         ("edges: before → after", "{shifted_before:.2f} → {shifted_after:.2f}")]),
    "crossdomain-edges": Table(
        "crossdomain/results.csv",
        [("method", "`{method}`"), ("all 16 pairs", pm("all_")), ("linear@edges", pm("linear_")),
         ("mlp@edges", pm("mlp_")), ("mlp-deep@edges", pm("mlp_deep_")), ("cnn@edges", pm("cnn_")),
         ("worst pair", "{worst:+.2f}"), ("pairs < −0.1", "{pairs_below:.0f}/{pairs:.0f}"),
         ("knowledge loss", "{knowledge_loss:.2f}")]),
    "demo": Table("demo/act1_success.csv", DEMO_SUCCESS),
    "demo-act2": Table("demo/act2_success.csv", DEMO_SUCCESS),
    "demo-controls": Table(
        "demo/act2_controls.csv",
        [("student", "`{student}`"), ("ce fine-tuning", "{ce_fine_tuning_pp:+.3f}"),
         ("own copy (kl)", "{own_copy_pp:+.3f}"), ("kl (mean over teachers)", "{kl_pp:+.3f}"),
         ("kl-dp", "{kl_dp_pp:+.3f}"), ("kl-dp-unsup", "{kl_dp_unsup_pp:+.3f}")]),
    "demo-seed-claims": Table(
        "demo/seed_claims.csv",
        [("act", "{act}"), ("seeds", "{seeds}"), ("paper claim", "{paper_claim}"), ("measured", "{measured}"),
         ("95% interval", "{interval_95}"), ("verdict", "{verdict}")]),
    "demo-claims": Table(
        "demo/claims.csv",
        [("run", "{run}"), ("act", "{act}"), ("paper claim", "{paper_claim}"), ("measured", "{measured}"),
         ("95% interval", "{interval_95}"), ("verdict", "{verdict}")]),
    "transfer-setting-sweep": Table(
        "transfer-setting-sweep/results.csv", [("setting", "{setting}")],
        pivot=("pair", ["linear-7px → mlp", "cnn → linear", "mlp-14px → mlp-deep", "mlp → cnn",
                        "mlp-deep → linear", "cnn → mlp"]), cell=SWEEP_CELL, pivot_header="{}"),
    "data-diverse-zoo": Table(
        "data-diverse-zoo/results.csv",
        [("method", "`{method}`"), ("student mode", "{student_mode}"), ("success %", "{success_pct:.1f}"),
         ("mean Δtransf (pp)", "{mean_pp:+.3f}"), ("min / max", "{min_pp:+.2f} / {max_pp:+.2f}"),
         ("positive pairs per student (linear-7px, linear, mlp-14px, mlp, mlp-deep, cnn; of 5)",
          "{positive_pairs}")]),
    "capacity-check": Table(
        "capacity-check/results.csv",
        [("student", "`{student}` ({student_acc:.2f})"), ("`kl` mean Δtransf", "{kl_mean_pp:+.3f}"),
         ("`kl-dp` mean Δtransf", "{kl_dp_mean_pp:+.3f}")]),
    "improve-demo": Table("improve/demo.csv", [
        ("zoo", "{zoo}"), ("teachers kept", "{teachers_kept}"), ("candidates", "{candidates}"),
        ("chosen on the selection split", "{chosen}||–"), ("selection Δ (pp)", "{selection_delta_pp:+.2f}"),
        ("turned right / wrong", "{turned_right} / {turned_wrong}||–"),
        ("certified Δacc [95% lower bound] (pp)", "{delta_acc_pp:+.2f} [{lower_bound_pp:+.2f}]"),
        ("p", "{p_value:.2g}"), ("decision", "**{decision}**"), ("s", "{seconds:.0f}")]),
    "speed": Table("speed/results.csv", [("benchmark", "{benchmark}"), ("case", "{case}"), ("measured", "{measured}")]),
}


def render_text(text: str, tables: dict[str, Table] = TABLES) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in tables:
            raise SystemExit(f"unknown results block {name!r}; known: {', '.join(tables)}")
        return match.group(1) + tables[name].render() + match.group(4)

    return BLOCK.sub(replace, text)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), RESULTS / "README.md",
            *sorted(RESULTS.glob("*/README.md"))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        new = render_text(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("out of date (run: uv run --frozen --no-sync python results/render.py): "
              + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    print(("checked" if args.check else "rendered") + f" {len(documents())} documents"
          + (f"; rewrote {', '.join(map(str, stale))}" if stale and not args.check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
