"""Figures of a transfer study (paper Figs. 4, 5, 7)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from gkt.core.registry import Registry
from gkt.reporting.figures import model_label, pyplot, save_figure
from gkt.reporting.study_tables import student_success, success_table

Record = dict[str, Any]


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
        axes[0].annotate(f"{model_label(s)} ({families[s]})", (ps[0].get("student_params", 1),
                         100 * mean(p[metric] for p in ps)), fontsize=6, alpha=0.7)
    axes[0].legend(fontsize=7)
    fig.suptitle("Transfer by student size and family")
    return save_figure(fig, path)


# Figures of a study, by file name (written in this order).
STUDY_FIGURES: Registry[Callable[[Sequence[Record], Path], Path]] = Registry("study figure")
STUDY_FIGURES.update({"fig4a_success_rate.png": plot_success_box, "fig4b_delta_vs_acc.png": plot_delta_vs_acc,
                      "fig7_gain_vs_loss.png": plot_gain_loss, "fig5a_transfer_rate_topx.png": plot_transfer_rate_topx,
                      "fig5b_by_student.png": plot_by_student})


def write_study_figures(pairs: Sequence[Record], directory: Path) -> list[Path]:
    return [fn(pairs, directory / name) for name, fn in STUDY_FIGURES.items()]
