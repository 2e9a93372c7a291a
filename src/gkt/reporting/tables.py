"""Plain-text and Markdown tables, and the one mean ± std summary of repeated runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, markdown: bool = False) -> str:
    """Align ``rows`` (dicts) under ``columns``; Markdown pipes when ``markdown``."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if markdown:
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    else:
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def numeric_text(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of repeated runs (std 0 for a single run)."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], scale: float = 1.0, signed: bool = False) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` to two decimals (``signed``: the mean with its sign);
    ``"–"`` when there are none."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{scale * mean:{'+' if signed else ''}.2f} ± {scale * std:.2f}"
