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
    """What ``gkt export`` wrote: the model ``name`` with ``num_classes`` classes, in ``format`` (``timm``,
    ``transformers`` or ``torchvision``) at ``path``; ``loader`` says how its library loads it; ``head``
    describes the exported head (its classes, or the network's full head with ``full_head``)."""

    name: str
    num_classes: int
    format: str
    path: Path
    loader: str
    head: str


def loader_of(fmt: str, path: Path) -> str:
    """The library calls that load an export in ``fmt`` from ``path``."""
    if fmt == "timm":
        return (f"timm.create_model('local-dir:{path}', pretrained=True) or "
                f"transformers.AutoModelForImageClassification.from_pretrained('{path}')")
    if fmt == "torchvision":
        return (f"torchvision.models.get_model(ARCHITECTURE, num_classes=N, **MODEL_ARGS) from {path}/config.json, "
                "then load_state_dict(safetensors.torch.load_file(model.safetensors)); its transforms are "
                "torchvision's ImageClassification arguments")
    return (f"transformers.AutoModelForImageClassification.from_pretrained('{path}') and "
            f"AutoImageProcessor.from_pretrained('{path}')")


def export(model: str, *, to: str | Path | None = None, zoo_dir: str | None = None, out: str | Path = "runs",
           run_dir: str | Path | None = None, full_head: bool = False) -> ExportResult:
    """Write the model of spec ``model`` (a timm, transformers or torchvision network: ``file:RUN_DIR/student``,
    ``timm:...``, ``hf:...``, ``torchvision:...``) in timm's hub format, transformers' ``save_pretrained``
    format or as a torchvision state dict with ``config.json`` (docs/export.md), with its class names and
    preprocessing, as ``gkt export`` does; the export is loaded back with the library's own loader and checked
    to give the model's logits.

    ``to``: a new (or empty) directory for the export; default ``RUN_DIR/model``, ``RUN_DIR`` being ``run_dir``
    or a new run directory under ``out``. ``zoo_dir``: where the embedded zoo is cached. ``full_head``: a model
    aligned by a class map is exported with its network's whole head and own classes (needed when the map
    merges classes). Nothing is ever overwritten."""
    loaded = load_model(model, zoo_dir=zoo_dir)
    what, made = ("--to", None) if to is not None else ("--out", None if run_dir else new_run_dir(out, "export"))
    try:
        fmt, path = export_model(loaded, to if to is not None else Path(run_dir or made) / "model", what, full_head)
    except BaseException:
        if made is not None:  # a run directory of this call that holds nothing
            made.rmdir()
        raise
    full = full_head and loaded.arch.source == "class_map"
    head = f"{loaded.arch.kwargs['base']['num_classes']} classes: its full head" if full \
        else f"{loaded.num_classes} classes"
    return ExportResult(loaded.name, loaded.num_classes, fmt, path, loader_of(fmt, path), head)
