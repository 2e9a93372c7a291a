"""Models back to their libraries: a gkt model (e.g. a transferred student) written in its library's own
format, with its class names and its eval transform, loadable without gkt:

* a timm network → timm's hub format (``config.json`` + ``model.safetensors``, written by timm's
  ``save_for_hf``): ``timm.create_model("local-dir:DIR", pretrained=True)``, a hub upload of DIR, and
  ``transformers.AutoModelForImageClassification.from_pretrained(DIR)`` (transformers' timm wrapper) load it;
* a ``transformers`` network → ``save_pretrained`` with ``id2label`` and an image processor:
  ``AutoModelForImageClassification.from_pretrained(DIR)`` and ``AutoImageProcessor.from_pretrained(DIR)``.

A model aligned by a class map that sends each data class to one model class is exported with its head cut
down to those classes (the same logits); a map that merges classes cannot be written as a linear head.
Every export is loaded back with the library's own loader and checked to give the model's logits.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from gkt.core.errors import GktError, storage_error
from gkt.core.io import default_permissions
from gkt.core.limits import check_path
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.heads import head_keys

EXPORT_FORMATS = {"timm": "timm", "hf": "transformers"}
PIL_RESAMPLE_CODES = {"nearest": 0, "bilinear": 2, "bicubic": 3}


def without_class_map(model: Classifier) -> Classifier:
    """``model`` as a plain network of its library: a class-mapped model whose map sends each class to one
    model class becomes its base network with the head rows of those classes (identical logits)."""
    if model.arch.source != "class_map":
        return model
    groups = model.arch.kwargs["groups"]
    if any(len(g) != 1 for g in groups):
        raise GktError(f"{model.name}: its class map merges several model classes into one data class; only a map "
                       "with one model class per data class can be exported as a linear head")
    base = ArchSpec.from_dict(model.arch.kwargs["base"])
    rows = torch.tensor([g[0] for g in groups])
    heads = head_keys(base)
    state = {k.removeprefix("base."): v for k, v in model.net.state_dict().items() if k.startswith("base.")}
    state = {k: v[rows] if k in heads else v for k, v in state.items()}
    plain = Classifier.create(replace(base, num_classes=len(groups)), model.preprocess, model.class_names,
                              provenance=dict(model.provenance), name=model.name)
    plain.net.load_state_dict(state, strict=True)
    return plain.eval()


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

    return timm.create_model(f"local-dir:{out}", pretrained=True)


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


WRITERS = {"timm": (_write_timm, _load_timm), "transformers": (_write_transformers, _load_transformers)}


def export_model(model: Classifier, out: str | Path, what: str = "--to") -> tuple[str, Path]:
    """Write ``model`` to the new directory ``out`` (``what`` names it in errors) in its library's format;
    returns ``(format, out)``. Nothing is left at ``out`` when it fails."""
    plain = without_class_map(model)
    fmt = EXPORT_FORMATS.get(plain.arch.source)
    if fmt is None:
        raise GktError(f"{model.name}: a {plain.arch.source} network has no library format to export to; gkt exports "
                       "timm and transformers models (its own checkpoint is a file: spec already)")
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
