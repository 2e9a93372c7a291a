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
    from gkt.models import load_model
    from gkt.models.export import export_model

    model = load_model(args.model, zoo_dir=args.zoo_dir)
    fmt, out = export_model(model, args.to or args.run_dir / "model", "--to" if args.to else "--out", args.full_head)
    loader = {"timm": f"timm.create_model('local-dir:{out}', pretrained=True) or "
                      f"transformers.AutoModelForImageClassification.from_pretrained('{out}')",
              "transformers": f"transformers.AutoModelForImageClassification.from_pretrained('{out}') and "
                              f"AutoImageProcessor.from_pretrained('{out}')",
              "torchvision": f"torchvision.models.get_model(ARCHITECTURE, num_classes=N, **MODEL_ARGS) from {out}/"
                             "config.json, then load_state_dict(safetensors.torch.load_file(model.safetensors)); "
                             "its transforms are torchvision's ImageClassification arguments"}[fmt]
    full = args.full_head and model.arch.source == "class_map"
    head = f"{model.arch.kwargs['base']['num_classes']} classes: its full head" if full else f"{model.num_classes} classes"
    print(f"exported {model.name} ({head}) in {fmt} format to {out}; verified with the "
          f"library's own loader. Load it with {loader}")
    return 0
