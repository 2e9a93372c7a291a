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
    from gkt.experiments.export import export as export_api

    result = export_api(args.model, to=args.to, zoo_dir=args.zoo_dir, run_dir=args.run_dir)
    print(f"exported {result.name} ({result.num_classes} classes) in {result.format} format to {result.path}; "
          f"verified with the library's own loader. Load it with {result.loader}")
    return 0
