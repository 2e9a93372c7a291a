"""``gkt export`` as a Python call: :func:`export` writes a model (e.g. a transferred student) in its
library's own format, checked with the library's own loader; the CLI parses, calls it and prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gkt.core.io import new_run_dir
from gkt.models import load_model
from gkt.models.export import export_model


@dataclass(frozen=True)
class ExportResult:
    """What ``gkt export`` wrote: the model ``name`` with ``num_classes`` classes, in ``format`` (``timm`` or
    ``transformers``) at ``path``; ``loader`` says how its library loads it."""

    name: str
    num_classes: int
    format: str
    path: Path
    loader: str


def loader_of(fmt: str, path: Path) -> str:
    """The library calls that load an export in ``fmt`` from ``path``."""
    if fmt == "timm":
        return (f"timm.create_model('local-dir:{path}', pretrained=True) or "
                f"transformers.AutoModelForImageClassification.from_pretrained('{path}')")
    return (f"transformers.AutoModelForImageClassification.from_pretrained('{path}') and "
            f"AutoImageProcessor.from_pretrained('{path}')")


def export(model: str, *, to: str | Path | None = None, zoo_dir: str | None = None, out: str | Path = "runs",
           run_dir: str | Path | None = None) -> ExportResult:
    """Write the model of spec ``model`` (a timm or transformers network: ``file:RUN_DIR/student``, ``timm:...``,
    ``hf:...``) in timm's hub format or transformers' ``save_pretrained`` format, with its class names and
    preprocessing, as ``gkt export`` does; the export is loaded back with the library's own loader and checked
    to give the model's logits.

    ``to``: a new (or empty) directory for the export; default ``RUN_DIR/model``, ``RUN_DIR`` being ``run_dir``
    or a new run directory under ``out``. ``zoo_dir``: where the embedded zoo is cached. Nothing is ever
    overwritten."""
    loaded = load_model(model, zoo_dir=zoo_dir)
    what, made = ("--to", None) if to is not None else ("--out", None if run_dir else new_run_dir(out, "export"))
    try:
        fmt, path = export_model(loaded, to if to is not None else Path(run_dir or made) / "model", what)
    except BaseException:
        if made is not None:  # a run directory of this call that holds nothing
            made.rmdir()
        raise
    return ExportResult(loaded.name, loaded.num_classes, fmt, path, loader_of(fmt, path))
