"""``gkt export SPEC``: a model (e.g. a transferred student) in its library's own format, loadable without gkt."""

from __future__ import annotations

import argparse

from gkt.cli import register_verb


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="SPEC", help="the model to export (a timm or transformers network: file:RUN/"
                   "student, timm:..., hf:...)")
    p.add_argument("--to", metavar="DIR", help="a new directory for the export (default: RUN_DIR/model)")


@register_verb("export", "write a model in timm's hub format or transformers' save_pretrained format, with its "
               "class names and preprocessing", _configure)
def export(args: argparse.Namespace) -> int:
    from gkt.models import load_model
    from gkt.models.export import export_model

    model = load_model(args.model, zoo_dir=args.zoo_dir)
    fmt, out = export_model(model, args.to or args.run_dir / "model", "--to" if args.to else "--out")
    loader = (f"timm.create_model('local-dir:{out}', pretrained=True) or "
              f"transformers.AutoModelForImageClassification.from_pretrained('{out}')" if fmt == "timm" else
              f"transformers.AutoModelForImageClassification.from_pretrained('{out}') and "
              f"AutoImageProcessor.from_pretrained('{out}')")
    print(f"exported {model.name} ({model.num_classes} classes) in {fmt} format to {out}; verified with the "
          f"library's own loader. Load it with {loader}")
    return 0
