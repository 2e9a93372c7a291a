"""``gkt export SPEC``: a model (e.g. a transferred student) in its library's own format, loadable without gkt."""

from __future__ import annotations

import argparse

from gkt.cli import register_verb


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="SPEC", help="the model to export (a timm, transformers or torchvision "
                   "network: file:RUN/student, timm:..., hf:..., torchvision:...)")
    p.add_argument("--to", metavar="DIR", help="a new directory for the export (default: RUN_DIR/model)")
    p.add_argument("--full-head", action="store_true",
                   help="a model aligned by a class map: export its network with the whole head and the network's "
                        "own classes (needed when the map merges classes; the map's aggregation is left out)")


@register_verb("export", "write a model in timm's hub format, transformers' save_pretrained format or as a "
               "torchvision state dict, with its class names and preprocessing", _configure)
def export(args: argparse.Namespace) -> int:
    from gkt.experiments.export import export as export_api

    result = export_api(args.model, to=args.to, zoo_dir=args.zoo_dir, run_dir=args.run_dir,
                        full_head=args.full_head)
    print(f"exported {result.name} ({result.head}) in {result.format} format to {result.path}; "
          f"verified with the library's own loader. Load it with {result.loader}")
    return 0
