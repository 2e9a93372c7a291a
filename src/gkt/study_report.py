"""Tables and figures of a transfer study, read from its results store (paper Figs. 4, 5, 7, 8)."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import mean, median, stdev
from typing import Any

from gkt.utils import atomic_path

STORE_NAME = "results.sqlite"  # a study's results store inside its run directory
GRID_KEYS = ("lr", "epochs", "temperature", "batch_size", "student_mode")  # job settings a study grid may vary

Record = dict[str, Any]
PAIR_FIELDS = ("student", "teacher", "method")


def setting(record: Record) -> str:
    """The hyperparameters of a record besides pair, method and seed (for grid summaries)."""
    keys = (*GRID_KEYS, "method_args")
    return ", ".join(f"{k}={record[k]}" for k in keys if k in record and record[k] not in (None, {}))


def pair_means(records: Sequence[Record], value: str = "delta_transf") -> list[Record]:
    """One row per (student, teacher, method, setting): the seeds' mean and sample std of ``value`` plus
    the other numeric metrics averaged."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        groups[(*(r[f] for f in PAIR_FIELDS), setting(r))].append(r)
    rows = []
    for (student, teacher, method, hp), rs in groups.items():
        numeric = {k for k, v in rs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        row = {"student": student, "teacher": teacher, "method": method, "setting": hp, "seeds": len(rs)}
        for k in sorted(numeric - {"seed"}):
            values = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
            row[k] = mean(values) if values else math.nan
        row[f"{value}_std"] = stdev([r[value] for r in rs]) if len(rs) > 1 else 0.0
        row["student_family"], row["teacher_family"] = rs[0].get("student_family"), rs[0].get("teacher_family")
        row["delta_acc"] = row.get("acc_teacher", math.nan) - row.get("acc_student_before", math.nan)
        rows.append(row)
    return rows


def beyond_noise(pair: Record, z: float = 2.0) -> int:
    """+1 / −1 where the transferred student's knowledge gain exceeds its loss (or the reverse) by more
    than ``z`` standard errors of McNemar's paired test on the test samples, ``(g − l) / √(g + l)`` with
    g, l the (seed-mean) counts of samples turned right / wrong; else 0 (also without ``test_samples``)."""
    n = pair.get("test_samples")
    if not n:
        return 0
    gained, lost = n * pair["knowledge_gain"], n * pair["knowledge_loss"]
    if gained + lost == 0:
        return 0
    score = (gained - lost) / math.sqrt(gained + lost)
    return int(score > z) - int(score < -z)


def success_table(pairs: Sequence[Record]) -> list[Record]:
    """Per method: share of pairs with seed-mean Δtransf > 0, the median over students of their success
    rate (paper Fig. 4a), mean Δtransf, gain and loss (percentage points), and the noise: the shares of
    pairs whose gain exceeds the loss beyond test-sample noise (clear gain) or the reverse (clear loss),
    see :func:`beyond_noise`, and with several seeds per pair the mean seed std of Δtransf."""
    by_method: dict[str, list[Record]] = defaultdict(list)
    for p in pairs:
        by_method[p["method"]].append(p)
    seeded = all(p.get("seeds", 1) > 1 for p in pairs)
    counted = all(p.get("test_samples") for p in pairs)
    rows = []
    for method, ps in by_method.items():
        per_student = student_success(ps)
        row = {"method": method, "pairs": len(ps), "success_%": 100 * mean(p["delta_transf"] > 0 for p in ps),
               "median_student_success_%": 100 * median(per_student.values()),
               "mean_delta_transf_pp": 100 * mean(p["delta_transf"] for p in ps),
               "min_delta_transf_pp": 100 * min(p["delta_transf"] for p in ps),
               "mean_gain_pp": 100 * mean(p["knowledge_gain"] for p in ps),
               "mean_loss_pp": 100 * mean(p["knowledge_loss"] for p in ps)}
        if seeded:
            row |= {"seeds": min(p["seeds"] for p in ps), "seed_std_pp": 100 * mean(p["delta_transf_std"] for p in ps)}
        if counted:
            signs = [beyond_noise(p) for p in ps]
            row |= {"clear_gain_%": 100 * mean(s > 0 for s in signs), "clear_loss_%": 100 * mean(s < 0 for s in signs)}
        rows.append(row)
    return sorted(rows, key=lambda r: r["success_%"])


def paper_claims(table: Sequence[Record]) -> list[Record]:
    """The paper's §5.1 success-rate claims checked against a success table (SPEC §6; claims whose
    methods the study did not run are left out)."""
    rate = {row["method"]: row["success_%"] for row in table}
    checks: list[tuple[str, str, bool]] = []  # (claim, measured, met)
    if "kl-dp" in rate:
        checks.append(("kl-dp success rate >= 85%", f"{rate['kl-dp']:.1f}%", rate["kl-dp"] >= 85))
    if {"kl", "kl-dp"} <= rate.keys():
        above = rate["kl-dp"] - rate["kl"]
        checks.append(("kl-dp at least 30 points above kl", f"{above:+.1f} points", above >= 30))
    if {"kl-dp", "kl-dp-unsup"} <= rate.keys():
        gap = rate["kl-dp-unsup"] - rate["kl-dp"]
        checks.append(("kl-dp-unsup within 15 points of kl-dp", f"{gap:+.1f} points", abs(gap) <= 15))
    if {"kl", "xekl-mcl", "kl-dp"} <= rate.keys():
        kl, mcl, dp = rate["kl"], rate["xekl-mcl"], rate["kl-dp"]
        checks.append(("xekl-mcl between kl and kl-dp", f"{kl:.1f} <= {mcl:.1f} <= {dp:.1f}", kl <= mcl <= dp))
    return [{"paper_claim": claim, "measured": measured, "met": "yes" if met else "NO"}
            for claim, measured, met in checks]


def student_success(pairs: Sequence[Record]) -> dict[str, float]:
    """Success rate per student: the share of its teachers with mean Δtransf > 0."""
    by_student: dict[str, list[bool]] = defaultdict(list)
    for p in pairs:
        by_student[p["student"]].append(p["delta_transf"] > 0)
    return {s: mean(v) for s, v in by_student.items()}


def best_settings(pairs: Sequence[Record]) -> list[Record]:
    """Per method, every hyperparameter setting's success rate and mean Δtransf, best first (appendix A)."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for p in pairs:
        groups[(p["method"], p["setting"])].append(p)
    rows = [{"method": m, "setting": s, "pairs": len(ps), "success_%": 100 * mean(p["delta_transf"] > 0 for p in ps),
             "mean_delta_transf_pp": 100 * mean(p["delta_transf"] for p in ps)} for (m, s), ps in groups.items()]
    return sorted(rows, key=lambda r: (r["method"], -r["success_%"], -r["mean_delta_transf_pp"]))


# ----------------------------------------------------------------------------- figures


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
    return path


def _methods(pairs: Sequence[Record]) -> list[str]:
    return [r["method"] for r in success_table(pairs)]


def plot_success_box(pairs: Sequence[Record], path: Path) -> Path:
    """Fig. 4a: per method, the distribution over students of their success rate."""
    plt = pyplot()
    methods = _methods(pairs)
    data = [[100 * v for v in student_success([p for p in pairs if p["method"] == m]).values()] for m in methods]
    fig, ax = plt.subplots(figsize=(1.4 * len(methods) + 2, 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20)
    ax.set(ylabel="success rate per student (%)", title="Success rate per student\n(share of its teachers with Δtransf > 0)",
           ylim=(-5, 105))
    return save_figure(fig, path)


def plot_delta_vs_acc(pairs: Sequence[Record], path: Path, bins: int = 6) -> Path:
    """Fig. 4b: Δtransf against the teacher-student accuracy gap, binned; mean of the top 25% per bin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    gaps = [100 * p["delta_acc"] for p in pairs]
    lo, hi = min(gaps), max(gaps)
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    for method in _methods(pairs):
        xs, ys = [], []
        for a, b in itertools.pairwise(edges):
            inside = sorted((100 * p["delta_transf"] for p in pairs
                             if p["method"] == method and a <= 100 * p["delta_acc"] <= b), reverse=True)
            if inside:
                xs.append((a + b) / 2)
                ys.append(mean(inside[: max(1, len(inside) // 4)]))
        ax.plot(xs, ys, marker="o", label=method)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set(xlabel="Δacc = acc(teacher) − acc(student) (pp)", ylabel="Δtransf, mean of top 25% (pp)",
           title="Transfer delta vs performance difference")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_gain_loss(pairs: Sequence[Record], path: Path) -> Path:
    """Fig. 7: knowledge gain vs knowledge loss per pair, one colour per method, with the diagonal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for method in _methods(pairs):
        ps = [p for p in pairs if p["method"] == method]
        gains, losses = [100 * p["knowledge_gain"] for p in ps], [100 * p["knowledge_loss"] for p in ps]
        top = max(top, *gains, *losses)
        ax.scatter(losses, gains, s=16, alpha=0.7, label=method)
    ax.plot([0, top], [0, top], color="black", linewidth=0.8, linestyle="--", label="gain = loss")
    ax.set(xlabel="knowledge loss (% of test samples)", ylabel="knowledge gain (% of test samples)",
           title="Knowledge gain vs loss per pair")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_transfer_rate_topx(pairs: Sequence[Record], path: Path) -> Path:
    """Fig. 5a: share of the positive flips transferred, within the classes holding the top-X% of them."""
    plt = pyplot()
    keys = sorted({k for p in pairs for k in p if k.startswith("transfer_rate_top")},
                  key=lambda k: float(k.removeprefix("transfer_rate_top")))
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in _methods(pairs):
        ps = [p for p in pairs if p["method"] == method]
        values = [mean([100 * p[k] for p in ps if not math.isnan(p.get(k, math.nan))] or [math.nan]) for k in keys]
        ax.plot([k.removeprefix("transfer_rate_top") + "%" for k in keys], values, marker="o", label=method)
    ax.set(xlabel="classes holding the top-X% of complementary knowledge", ylabel="positive flips transferred (%)",
           title="Transfer rate by class concentration")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_by_student(pairs: Sequence[Record], path: Path, metric: str = "delta_transf") -> Path:
    """Figs. 5b/8: mean Δtransf and transfer rate per student against its size, coloured by family."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    students = sorted({p["student"] for p in pairs})
    for ax, key, label in ((axes[0], metric, "mean Δtransf (pp)"),
                           (axes[1], "transfer_rate_top100", "positive flips transferred (%)")):
        plotted = 0
        for method in _methods(pairs):
            xs, ys = [], []
            for s in students:
                ps = [p for p in pairs if p["student"] == s and p["method"] == method and key in p]
                y = 100 * mean(p[key] for p in ps) if ps else math.nan
                if math.isfinite(y):  # transfer rates are NaN where the teacher has no positive flips
                    xs.append(ps[0].get("student_params", math.nan))
                    ys.append(y)
            ax.scatter(xs, ys, label=method, s=30)
            plotted += len(xs)
        if plotted:
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set(xlabel="student parameters", ylabel=label)
    families = {p["student"]: p.get("student_family") for p in pairs}
    for s in students:
        ps = [p for p in pairs if p["student"] == s]
        if not math.isfinite(mean(p[metric] for p in ps)):
            continue
        axes[0].annotate(f"{s.split(':')[-1]} ({families[s]})", (ps[0].get("student_params", 1),
                         100 * mean(p[metric] for p in ps)), fontsize=6, alpha=0.7)
    axes[0].legend(fontsize=7)
    fig.suptitle("Transfer by student size and family")
    return save_figure(fig, path)


STUDY_FIGURES = {
    "fig4a_success_rate.png": plot_success_box,
    "fig4b_delta_vs_acc.png": plot_delta_vs_acc,
    "fig7_gain_vs_loss.png": plot_gain_loss,
    "fig5a_transfer_rate_topx.png": plot_transfer_rate_topx,
    "fig5b_by_student.png": plot_by_student,
}


def write_study_figures(pairs: Sequence[Record], directory: Path) -> list[Path]:
    return [fn(pairs, directory / name) for name, fn in STUDY_FIGURES.items()]


def write_study_outputs(run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tables (CSV + Markdown) and figures from the store's records; returns the success table."""
    from gkt.report import format_table

    pairs = pair_means(records)
    table = success_table(pairs)
    for name, rows in (("runs.csv", records), ("pairs.csv", pairs), ("success_table.csv", table),
                       ("best_settings.csv", best_settings(pairs))):
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(run_dir / name) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows)
    with atomic_path(run_dir / "summary.md") as tmp:
        text = "## Transfer success per method\n\n" + format_table(table, markdown=True) + "\n"
        claims = paper_claims(table)
        if claims:
            text += "\n## The paper's claims (§5.1) at this study's scale\n\n" + format_table(claims, markdown=True) + "\n"
        tmp.write_text(text)
    write_study_figures(pairs, run_dir)
    return table
