"""Tables and the Fig. 9 plot of adapt/crossdomain studies."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gkt.reporting.figures import pyplot, save_figure
from gkt.reporting.tables import format_mean_std


def method_summary(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, in percentage points: Δtransf averaged over the pairs with a weaker teacher
    (acc_teacher < acc_student_before on the evaluation data) and over those with a stronger one, as mean ±
    sample std over seeds; the worst pair (seed mean); the share of pairs whose seed-mean Δtransf is below
    −0.1; the mean knowledge loss."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    rows = []
    for method, rs in by_method.items():
        row: dict[str, Any] = {"method": method, "pairs": len({(r["student"], r["teacher"]) for r in rs}),
                               "seeds": len({r["seed"] for r in rs})}
        for side, keep in (("weaker", lambda r: r["acc_teacher"] < r["acc_student_before"]),
                           ("stronger", lambda r: r["acc_teacher"] >= r["acc_student_before"])):
            per_seed: dict[int, list[float]] = defaultdict(list)
            for r in rs:
                if keep(r):
                    per_seed[r["seed"]].append(100 * r["delta_transf"])
            row[f"{side}_teacher_pairs"] = len({(r["student"], r["teacher"]) for r in rs if keep(r)})
            row[f"delta_transf_{side}_pp"] = format_mean_std([statistics.mean(v) for v in per_seed.values()], signed=True)
        per_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in rs:
            per_pair[(r["student"], r["teacher"])].append(100 * r["delta_transf"])
        pair_means = [statistics.mean(v) for v in per_pair.values()]
        row["worst_pair_pp"] = round(min(pair_means), 2)
        row["pairs_below_-0.1pp_%"] = round(100 * statistics.mean(m < -0.1 for m in pair_means), 1)
        row["knowledge_loss_pp"] = round(100 * statistics.mean(r["knowledge_loss"] for r in rs), 2)
        rows.append(row)
    return sorted(rows, key=lambda r: r["method"])


def plot_delta_transf_vs_gap(pairs: Sequence[dict[str, Any]], path: Path, title: str, bins: int = 5) -> Path:
    """Paper Figs. 9/10: one panel per method; every pair's Δtransf (mean ± std over seeds) against
    Δacc = acc(teacher) − acc(student) on the evaluation data, and the paper's summary line: the mean of
    the top 25% of pairs in each of ``bins`` equal-width Δacc bins."""
    plt = pyplot()
    methods = sorted({p["method"] for p in pairs})
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.8), sharey=True, squeeze=False)
    gaps = [100 * p["delta_acc"] for p in pairs]
    lo, hi = min(gaps), max(gaps)
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    for ax, method in zip(axes[0], methods):
        ps = [p for p in pairs if p["method"] == method]
        ax.errorbar([100 * p["delta_acc"] for p in ps], [100 * p["delta_transf"] for p in ps],
                    yerr=[100 * p.get("delta_transf_std", 0.0) for p in ps], fmt="o", ms=4, alpha=0.6, capsize=2,
                    label="pair (mean ± std over seeds)")
        xs, ys = [], []
        for a, b in zip(edges, edges[1:]):
            inside = sorted((100 * p["delta_transf"] for p in ps if a <= 100 * p["delta_acc"] <= b), reverse=True)
            if inside:
                xs.append((a + b) / 2)
                ys.append(statistics.mean(inside[: max(1, len(inside) // 4)]))
        ax.plot(xs, ys, color="black", marker="s", label="top 25% per Δacc bin")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6, linestyle=":")
        ax.set(title=method, xlabel="Δacc = acc(teacher) − acc(student) (pp)")
    axes[0][0].set_ylabel("Δtransf (pp)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)
