"""The one plotting setup: a headless pyplot and atomic figure writes. Every figure module gets pyplot
from :func:`pyplot` and writes through :func:`save_figure`."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from gkt.core.io import atomic_path


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (gkt writes PNG files, never opens windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_label(spec: str) -> str:
    """A model spec as a plot label: ``zoo:NAME`` and ``file:PATH`` lose their prefix, other specs stay whole."""
    source, sep, rest = spec.partition(":")
    return rest if sep and source in ("zoo", "file") else spec


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (tight layout unless the figure has a layout engine; the saved area
    grows to hold every title and label) and close it."""
    path = Path(path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)  # titles never clipped
    pyplot().close(fig)
    return path
