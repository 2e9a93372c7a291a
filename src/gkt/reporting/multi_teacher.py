"""Tables and figures of multi-teacher transfer (paper Table 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gkt.core.io import atomic_path, write_csv, write_json
from gkt.models.checkpoint import save_checkpoint
from gkt.reporting.figures import pyplot, save_figure
from gkt.reporting.findings import number
from gkt.reporting.tables import format_table
from gkt.transfer.multi import MultiResult


def write_result(result: MultiResult, out_dir: Path) -> None:
    """``final.json`` and ``steps.csv`` (and the chain plot for sequential, the model for soup) in ``out_dir``."""
    final = {"mode": result.mode, **result.metrics, **result.details, "steps": result.steps}
    if result.mode == "soup":
        final["checkpoint"] = f"file:{save_checkpoint(result.model, out_dir / 'student').with_suffix('')}"
    else:
        final["checkpoint"] = f"file:{Path(result.steps[-1]['run']) / 'student'}"
    write_json(out_dir / "final.json", final)
    write_csv(out_dir / "steps.csv", result.steps)
    if result.mode == "sequential":
        plot_chain(result.steps, out_dir / "chain.png")


def plot_chain(steps: Sequence[dict[str, Any]], path: Path) -> None:
    """Fig. 11: knowledge gain, loss and Δtransf after each sequential step — against the original
    student (lines) and against the previous step (bars)."""
    plt = pyplot()

    x = list(range(len(steps) + 1))
    labels = ["start"] + [f"{s['step']}: {s['teacher']}" for s in steps]
    fig, (ax_orig, ax_prev) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label in (("knowledge_gain", "knowledge gain"), ("knowledge_loss", "knowledge loss"),
                       ("delta_transf", "Δtransf")):
        ax_orig.plot(x, [0.0] + [100 * s[key] for s in steps], marker="o", label=label)
    ax_orig.set(ylabel="% of test samples", title="against the original student")
    width = 0.27
    for shift, (key, label) in zip((-width, 0, width), (("gain_prev", "gain"), ("loss_prev", "loss"),
                                                        ("delta_prev", "Δ accuracy"))):
        ax_prev.bar([i + shift for i in x[1:]], [100 * s[key] for s in steps], width, label=label)
    ax_prev.set(title="against the previous step")
    for ax in (ax_orig, ax_prev):
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xticks(x, labels, rotation=20, fontsize=7)
        ax.legend(fontsize=8)
    save_figure(fig, path)


# Table-4 columns and their printed headers.
SUMMARY_COLUMNS = {"single_mean": "single mean", "single_min": "single min", "single_max": "single max",
                   "sequential": "sequential", "parallel": "parallel", "soup": "soup",
                   "sequential_minus_best_single": "seq − best single"}


def summary_table(entries: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Table 4/9 style: one line per student, Δtransf in points as mean ± std over seeds.
    ``entries``: ``{"student", "acc_student", "method", "seeds", "aggregate"}`` (see :func:`summary_entry`)."""
    rows = []
    for entry in entries:
        agg = entry["aggregate"]
        row = {"student": entry["student"], "acc": number(100 * entry["acc_student"]), "method": entry["method"],
               "seeds": len(entry["seeds"])}
        for column, header in SUMMARY_COLUMNS.items():
            cell = agg.get(column)
            row[header] = "-" if cell is None else f"{number(100 * cell['mean'], signed=True)} ± {number(100 * cell['std'])}"
        rows.append(row)
    return format_table(rows, markdown=markdown)


def write_summary(entries: Sequence[dict[str, Any]], run_dir: Path) -> None:
    """``summary.json``, ``summary.csv`` (means and stds in accuracy fractions) and ``summary.md``."""
    write_json(run_dir / "summary.json", list(entries))
    flat = []
    for entry in entries:
        row: dict[str, Any] = {"student": entry["student"], "acc_student": entry["acc_student"],
                               "method": entry["method"], "seeds": len(entry["seeds"])}
        for column, cell in entry["aggregate"].items():
            row[f"{column}_mean"], row[f"{column}_std"] = cell["mean"], cell["std"]
        flat.append(row)
    write_csv(run_dir / "summary.csv", flat)
    text = ("Δtransf in accuracy points on the test split, mean ± std over seeds "
            "(single: over the teachers, each transferred alone).\n\n" + summary_table(entries, markdown=True) + "\n")
    with atomic_path(run_dir / "summary.md") as tmp:
        tmp.write_text(text)
