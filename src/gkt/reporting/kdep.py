"""Figures of the KDEP benchmark."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gkt.reporting.figures import pyplot, save_figure


def plot_benchmark(summary: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Mean downstream accuracy (± std over seeds) against pre-training wall time, one point per method."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, row in enumerate(summary):
        ax.errorbar(row["pretrain_s"], 100 * row["mean_acc"], yerr=100 * row["mean_std"], fmt="o", capsize=3,
                    color=f"C{i}", label=row["method"])
        ax.annotate(row["method"], (row["pretrain_s"], 100 * row["mean_acc"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set_xlabel("pre-training wall time (s)")
    ax.set_ylabel("mean downstream accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path, dpi=120)
