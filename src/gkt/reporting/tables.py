"""Plain-text and Markdown tables, and the one mean ± std summary of repeated runs."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

# Characters that start Markdown markup able to run or fetch something in a viewer (inline HTML, autolinks,
# code spans) or break a table, and control characters (a terminal runs escape sequences).
_MARKDOWN_SPECIAL = re.compile(r"([\\`<>&|])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain_text(text: str) -> str:
    """``text`` safe to print or write as plain text: control characters (ANSI escape sequences, carriage
    returns) shown as escapes, line breaks as spaces."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], str(text).replace("\r\n", " ").replace("\n", " "))


def markdown_text(text: str) -> str:
    """``text`` (a class name, a spec, a path: anything that came from a user) as literal Markdown: inline
    HTML, autolinks, code spans, table pipes and links (``](``) are backslash-escaped, so a viewer shows the
    text instead of running it; on one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", plain_text(text)).replace("](", "]\\(")


def markdown_fence(text: str) -> str:
    """``text`` in a fenced code block whose fence is longer than any run of backticks in it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}json\n{text}\n{fence}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return plain_text(str(value))


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, markdown: bool = False) -> str:
    """Align ``rows`` (dicts) under ``columns``; Markdown pipes when ``markdown`` (every cell escaped:
    :func:`markdown_text`); control characters shown as escapes."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    if markdown:
        columns = [markdown_text(c) for c in columns]
        cells = [[markdown_text(v) for v in row] for row in cells]
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
