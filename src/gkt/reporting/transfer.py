"""Figures of a single transfer run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gkt.reporting.figures import pyplot, save_figure


def plot_history(history: Sequence[dict], path: str | Path, title: str, teacher_acc: float) -> None:
    """Accuracy (with the teacher's as a reference line) and knowledge gain/loss over epochs, as a PNG."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    history = [row for row in history if "acc" in row]  # epochs that were evaluated
    epochs = [row["epoch"] for row in history]
    fig, (ax_acc, ax_gl) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_acc.plot(epochs, [100 * row["acc"] for row in history], marker="o", label="student")
    ax_acc.axhline(100 * teacher_acc, color="grey", linestyle="--", label="teacher")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    ax_acc.legend()
    for key, label in (("knowledge_gain", "knowledge gain"), ("knowledge_loss", "knowledge loss"),
                       ("delta_transf", "Δtransf")):
        ax_gl.plot(epochs, [100 * row[key] for row in history], marker="o", label=label)
    ax_gl.axhline(0, color="black", linewidth=0.5)
    ax_gl.set(xlabel="epoch", ylabel="% of test samples", title="gain / loss")
    ax_gl.legend()
    for ax in (ax_acc, ax_gl):  # epochs are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
