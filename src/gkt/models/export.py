"""Models back to their libraries: a gkt model (e.g. a transferred student) written in its library's own
format, with its class names and its eval transform, loadable without gkt:

* a timm network → timm's hub format (``config.json`` + ``model.safetensors``, written by timm's
  ``save_for_hf``): ``timm.create_model("local-dir:DIR", pretrained=True)``, a hub upload of DIR, and
  ``transformers.AutoModelForImageClassification.from_pretrained(DIR)`` (transformers' timm wrapper) load it;
* a ``transformers`` network → ``save_pretrained`` with ``id2label`` and an image processor:
  ``AutoModelForImageClassification.from_pretrained(DIR)`` and ``AutoImageProcessor.from_pretrained(DIR)``;
* a ``torchvision`` network → its state dict (``model.safetensors``) and ``config.json`` with what
  torchvision's weights enums carry: the architecture and its arguments for ``torchvision.models.get_model``,
  the ``categories`` and the eval ``transforms`` (the arguments of torchvision's ``ImageClassification``
  preset: ``crop_size``, ``resize_size``, ``interpolation``, ``mean``, ``std``, ``antialias``).

A model aligned by a class map that sends each data class to one model class is exported with its head cut
down to those classes (the same logits); a map that merges classes cannot be written as a linear head, but
``full_head`` exports the network with its whole head and its own classes (the map's aggregation left out).
Every export is loaded back with the library's own loader and checked to give the model's logits.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from gkt.core.errors import GktError, storage_error
from gkt.core.io import default_permissions
from gkt.core.limits import check_path
from gkt.models.class_map import SOURCE_CLASSES
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.heads import head_keys

EXPORT_FORMATS = {"timm": "timm", "hf": "transformers", "torchvision": "torchvision"}
PIL_RESAMPLE_CODES = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def without_class_map(model: Classifier, full_head: bool = False) -> Classifier:
    """``model`` as a plain network of its library: a class-mapped model whose map sends each class to one
    model class becomes its base network with the head rows of those classes (identical logits); with
    ``full_head``, any class-mapped model becomes its base network with every head row and the base's own
    class names (the logits before the map's aggregation)."""
    if model.arch.source != "class_map":
        return model
    groups = model.arch.kwargs["groups"]
    base = ArchSpec.from_dict(model.arch.kwargs["base"])
    state = {k.removeprefix("base."): v for k, v in model.net.state_dict().items() if k.startswith("base.")}
    if full_head:
        names = class_map_source_classes(model.provenance)
        if names is None or len(names) != base.num_classes:
            raise GktError(f"{model.name}: its checkpoint does not record the names of its {base.num_classes} model "
                           "classes (made by an older gkt); load the model again with its class map to export its "
                           "full head")
    else:
        if any(len(g) != 1 for g in groups):
            raise GktError(f"{model.name}: its class map merges several model classes into one data class, which a "
                           "linear head cannot hold; export the network with its whole head and its own "
                           f"{base.num_classes} classes with --full-head")
        rows = torch.tensor([g[0] for g in groups])
        heads = head_keys(base)
        state = {k: v[rows] if k in heads else v for k, v in state.items()}
        names, base = model.class_names, replace(base, num_classes=len(groups))
    plain = Classifier.create(base, model.preprocess, names, provenance=dict(model.provenance), name=model.name)
    plain.net.load_state_dict(state, strict=True)
    return plain.eval()


def class_map_source_classes(provenance: Any) -> list[str] | None:
    """The class names of the network a class map was applied to, as ``apply_class_map`` records them in
    the provenance (nested in a derived model's, e.g. a transferred student's ``student_provenance``)."""
    if isinstance(provenance, dict) and isinstance(provenance.get(SOURCE_CLASSES), list):
        return provenance[SOURCE_CLASSES]
    inner = provenance.values() if isinstance(provenance, dict) else provenance if isinstance(provenance, list) else ()
    return next((names for names in map(class_map_source_classes, inner) if names is not None), None)


def _write_timm(model: Classifier, out: Path) -> None:
    from timm.models import save_for_hf

    pre = model.preprocess
    save_for_hf(model.net.model, str(out), model_config={"label_names": list(model.class_names)},
                safe_serialization=True,
                data_config={"input_size": (pre.channels, pre.input_size, pre.input_size), "crop_pct": pre.crop_pct,
                             "interpolation": pre.interpolation, "mean": pre.mean, "std": pre.std,
                             "crop_mode": "squash" if pre.squash else "center"})
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    # The class count lives in the top-level num_classes; transformers' timm wrapper passes it separately.
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2))


def _load_timm(out: Path) -> torch.nn.Module:
    import timm

    timm_log = logging.getLogger("timm")
    level = timm_log.level
    timm_log.setLevel(logging.WARNING)  # the check's load is no news ("Loading pretrained weights from ...")
    try:
        return timm.create_model(f"local-dir:{out}", pretrained=True)
    finally:
        timm_log.setLevel(level)


def _write_transformers(model: Classifier, out: Path) -> None:
    from transformers import CLIPImageProcessor, ViTImageProcessor

    hf_model = model.net.model
    names = list(model.class_names)
    hf_model.config.id2label = dict(enumerate(names))
    hf_model.config.label2id = {name: i for i, name in enumerate(names)}
    hf_model.save_pretrained(out)
    pre = model.preprocess
    common = {"image_mean": list(pre.mean), "image_std": list(pre.std), "resample": PIL_RESAMPLE_CODES[pre.interpolation]}
    size, crop = pre.view.resize, {"height": pre.input_size, "width": pre.input_size}
    if pre.squash:  # both sides to the resize size (then the centre crop)
        processor = ViTImageProcessor(size={"height": size, "width": size}, do_center_crop=size != pre.input_size,
                                      crop_size=crop, **common)
    else:  # the shorter side to the resize size, then the centre crop
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size=crop, do_center_crop=True, **common)
    processor.save_pretrained(out)


class _LogitsOf(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _load_transformers(out: Path) -> torch.nn.Module:
    from transformers import AutoModelForImageClassification

    return _LogitsOf(AutoModelForImageClassification.from_pretrained(out, trust_remote_code=False))


def _write_torchvision(model: Classifier, out: Path) -> None:
    from safetensors.torch import save_file

    pre = model.preprocess
    if pre.squash or pre.crop_rounding != "round":
        how = "both sides resized" if pre.squash else "crop offsets rounded down"
        raise GktError(f"{model.name}: its eval transform ({how}) is not one torchvision's ImageClassification preset can describe; export it "
                       "without squash/crop_rounding options, or use gkt's own checkpoint (a file: spec)")
    save_file({k: v.detach().contiguous().clone() for k, v in model.net.model.state_dict().items()},
              str(out / "model.safetensors"))
    config = {"library": "torchvision", "architecture": model.arch.name, "num_classes": model.num_classes,
              "model_args": dict(model.arch.kwargs), "categories": list(model.class_names),
              "transforms": {"crop_size": pre.input_size, "resize_size": pre.view.resize,
                             "interpolation": pre.interpolation, "mean": list(pre.mean), "std": list(pre.std),
                             "antialias": True}}
    (out / "config.json").write_text(json.dumps(config, indent=2))


def load_torchvision_export(out: str | Path) -> torch.nn.Module:
    """A torchvision export as torchvision builds and loads it (what its ``config.json`` tells a user to do)."""
    import torchvision
    from safetensors.torch import load_file

    config = json.loads((Path(out) / "config.json").read_text())
    model = torchvision.models.get_model(config["architecture"], weights=None, num_classes=config["num_classes"],
                                         **config["model_args"])
    model.load_state_dict(load_file(Path(out) / "model.safetensors"))
    return model


WRITERS = {"timm": (_write_timm, _load_timm), "transformers": (_write_transformers, _load_transformers),
           "torchvision": (_write_torchvision, load_torchvision_export)}


def export_model(model: Classifier, out: str | Path, what: str = "--to", full_head: bool = False) -> tuple[str, Path]:
    """Write ``model`` to the new directory ``out`` (``what`` names it in errors) in its library's format;
    returns ``(format, out)``. ``full_head``: a class-mapped model with its network's whole head (see
    :func:`without_class_map`). Nothing is left at ``out`` when it fails."""
    plain = without_class_map(model, full_head)
    fmt = EXPORT_FORMATS.get(plain.arch.source)
    if fmt is None:
        raise GktError(f"{model.name}: a {plain.arch.source} network has no library format to export to; gkt exports "
                       "timm, transformers and torchvision models (its own checkpoint is a file: spec already)")
    out = Path(out)
    check_path(out, what)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise GktError(f"{what} {out}: exists and is not a directory; gkt never overwrites (give a new "
                       "directory)")
    if out.exists() and any(out.iterdir()):
        raise GktError(f"{what} {out}: exists and is not empty; gkt never overwrites (give a new directory)")
    write, load = WRITERS[fmt]
    partial = out.with_name(f".{out.name}.partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            write(plain.cpu().eval(), partial)
            default_permissions(partial)  # timm writes model.safetensors 0600 through a temporary file
            check_export(plain, load(partial).eval(), partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except OSError as exc:  # a read-only, full or pseudo file system (/proc): the fix is another --to
        stored = storage_error(exc)
        reason = exc.strerror or str(exc) if stored is None else str(stored).split("; ")[0]
        raise GktError(f"{what} {out}: cannot write the export there ({reason}); choose a writable {what} "
                       "with free space") from None
    except Exception as exc:
        stored = storage_error(exc)  # a full disk reported by safetensors / torch
        if stored is None:
            raise
        raise GktError(f"{what} {out}: {stored}".replace("--out / $GKT_HOME", what)) from None
    return fmt, out


def check_export(model: Classifier, loaded: torch.nn.Module, where: Path) -> None:
    """The library's own load of the export gives the model's logits (on a fixed random input)."""
    pre = model.preprocess
    x = torch.rand(2, pre.channels, pre.input_size, pre.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model.net(x), loaded(x)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise GktError(f"{where}: the exported model does not reproduce {model.name}'s logits; nothing was exported")
