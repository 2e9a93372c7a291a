"""Training views against the libraries' own recipes: what the frozen models of a transfer get as input.

    uv run python benchmarks/bench_views.py [--images 120] [--csv FILE]

Models of three libraries stored in their hubs' layouts (random weights: timm ``save_for_hf`` snapshots of a
bicubic and a bilinear model with crop_pct 0.95, a transformers ``save_pretrained`` ViT with a centre-cropping
image processor (crop_pct 0.875), a torchvision state dict in the torch hub cache), loaded offline by their hub
names as a user loads them, and photo-like JPEGs of varied sizes and aspect ratios in an image folder. For each
model, the inputs it gets *during a transfer* (gkt's transfer trainer over the transfer set as ``gkt transfer``
decodes it; a random-init student beside it) are compared with each library's own recipe on PIL images:

- **eval view** (no augmentation): timm's ``create_transform(**resolve_data_config(model))``, torchvision's
  ``weights.transforms()``, the transformers image processor;
- **photo augmentation** (``--augment photo``): the library's ``resized_crop`` + ``hflip`` on the PIL image
  with the crop box gkt drew, then its resize interpolation, ``ToTensor`` and normalisation.

Reported per model and view: mean and max absolute difference of the normalised inputs, and top-1 agreement of
the model's predictions (its head replaced by one that is confident on the library's inputs of that recipe,
fitted on whitened features, so that predictions vary between images and depend on small input changes). For comparison, the previous training decode (one bilinear
square shared by all models, each resizing it again) is measured too. The last line gives the minimum agreement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.hubs: the hubs' layouts


def library_eval(spec: str, model) -> Callable:
    """The library's own eval pipeline on a PIL image, as its documentation builds it."""
    if spec.startswith("timm:"):
        from timm.data import create_transform, resolve_data_config

        return create_transform(**resolve_data_config(model=model.net.model))
    if spec.startswith("torchvision:"):
        import torchvision

        arch, _, weights = spec.removeprefix("torchvision:").partition("?weights=")
        return torchvision.models.get_model_weights(arch)[weights].transforms()
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(spec.removeprefix("hf:"))
    return lambda img: processor(img, return_tensors="pt")["pixel_values"][0]


def library_crop(model, box) -> Callable:
    """The libraries' training geometry with gkt's box: ``resized_crop`` + ``hflip`` on the PIL image with the
    model's interpolation, then ``ToTensor`` and its normalisation."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    p = model.preprocess

    def apply(img):
        out = F.resized_crop(img, box.top, box.left, box.height, box.width, [p.input_size] * 2,
                             InterpolationMode(p.interpolation))
        out = F.hflip(out) if box.flip else out
        return F.normalize(F.to_tensor(out), list(p.mean), list(p.std))

    return apply


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=120)
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gkt-bench-views-"))
    os.environ.update({"HF_HOME": str(root / "hf"), "HF_HUB_CACHE": str(root / "hf" / "hub"),
                       "TORCH_HOME": str(root / "torch"), "HF_HUB_OFFLINE": "1", "GKT_HOME": str(root / "gkt")})
    from photos import photo_jpegs
    from PIL import Image

    import gkt.models.torchvision_source
    from gkt.core.io import write_csv
    from gkt.data.folder import load_image_folder
    from gkt.engine.loop import Runtime
    from gkt.models import load_model
    from gkt.models.preprocess import decode_size_for, to_unit_float
    from gkt.transfer import TransferConfig, decoded_for
    from gkt.transfer.trainer import TransferTrainer
    from tests.hubs import (
        HF_MODEL,
        confident_head,
        save_hf_snapshot,
        save_timm_snapshot,
        save_torchvision_checkpoint,
    )

    timm_names = ("test_efficientnet.r160_in1k", "test_resnet.r160_in1k")  # bicubic / bilinear, crop_pct 0.95
    for seed, name in enumerate(timm_names):
        save_timm_snapshot(root / "hf", name, seed)
    save_hf_snapshot(root / "hf", HF_MODEL)
    save_torchvision_checkpoint(root / "torch", "mobilenet_v3_small", "IMAGENET1K_V1")
    # random weights stored under torchvision's official file name, whose published hash they cannot match
    gkt.models.torchvision_source.verify_torch_hub_file = lambda path, what: None
    specs = [*(f"timm:{n}" for n in timm_names), f"hf:{HF_MODEL}",
             "torchvision:mobilenet_v3_small?weights=IMAGENET1K_V1"]
    folder = load_image_folder(photo_jpegs(root / "photos", args.images, 4, (120, 400), quality=92))
    models = [load_model(spec).eval() for spec in specs]
    rows = []
    device = torch.device("cpu")
    for recipe in ("eval view", "photo augmentation", "one square decode (before)"):
        augment = ("photo",) if recipe == "photo augmentation" else ()
        for k, (spec, teacher) in enumerate(zip(specs, models)):
            # A student of another library beside it (its own view in the plan), named in the teacher's classes.
            student = load_model(specs[(k + 1) % len(specs)])
            student.class_names = list(teacher.class_names)
            transfer_set, _ = decoded_for([student, teacher], folder, folder)
            if recipe.startswith("one square"):
                transfer_set = folder.at_decode_size(decode_size_for([student.preprocess, teacher.preprocess]))
            config = TransferConfig(method="kl", epochs=1, batch_size=min(16, len(folder)), augment=augment)
            trainer = TransferTrainer(student, teacher, config.build_method(), config, device, transfer_set,
                                      Runtime(cache_outputs=False, loader_workers=0))
            data = trainer.epoch_data(0)
            rows_idx = torch.arange(len(data))
            ours = trainer.task.input_of(teacher, to_unit_float(data.load(rows_idx)))
            if recipe == "photo augmentation":
                theirs = torch.stack([library_crop(teacher, data.crops.box(i, *reversed(Image.open(f).size)))(
                    Image.open(f).convert("RGB")) for i, f in enumerate(folder.files)])
            else:
                theirs = torch.stack([library_eval(spec, teacher)(Image.open(f).convert("RGB")) for f in folder.files])
            confident_head(teacher, theirs)  # confident on the library's inputs of this recipe
            with torch.no_grad():
                agree = (teacher.net(ours).argmax(1) == teacher.net(theirs).argmax(1)).double().mean().item()
            diff = (ours - theirs).abs()
            rows.append({"model": spec, "inputs": recipe, "interpolation": teacher.preprocess.interpolation,
                         "crop_pct": teacher.preprocess.crop_pct, "images": len(ours),
                         "mean_abs_diff": round(diff.mean().item(), 4), "max_abs_diff": round(diff.max().item(), 3),
                         "top1_agreement": round(agree, 4)})
            print(f"{recipe:28s} {spec:52s} |Δ| mean {diff.mean():.4f} max {diff.max():.3f}   "
                  f"top-1 agreement {100 * agree:.1f}%", flush=True)
    if args.csv:
        write_csv(args.csv, rows)
    training = [r for r in rows if not r["inputs"].startswith("one square")]
    print(f"training views vs the libraries' recipes: top-1 agreement min "
          f"{100 * min(r['top1_agreement'] for r in training):.1f}% ({len(specs)} models)")


if __name__ == "__main__":
    main()
