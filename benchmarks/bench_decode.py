"""Analysis throughput on JPEG folders against the decode limit (issue 18).

    uv run python benchmarks/bench_decode.py [--images 2000] [--input-size 32] [--workers N] [--device cuda]
        [--precision bf16] [--csv FILE] [--tiny]

Builds (once, under the temp dir) an ImageNet-layout folder of ``--images`` ImageNet-like JPEGs (smooth
colour fields with texture, sizes around 400×350, 10 classes) and times, with an empty gkt cache, what
``gkt analyze --data folder:ROOT --split val`` does with 4 small timm models (random init, a timm
``pretrained_cfg`` with ``--input-size`` px and crop_pct 0.875): list the folder, describe the data (pixel
statistics are measured only for models that need them; these bring their own), run the analysis (each
model over every image, its random-init baseline over a sample of at most 5,000 in the same pass).
Building the models is not timed. The decode limit is torchvision decoding + resizing (shorter side, antialiased, then
centre crop) of the same files to the same decode size in a plain DataLoader with the same number of
worker processes — timed before and after the analysis, averaged, as the machine may be shared. The
models' forward passes alone, on images decoded up front, are timed too (each model's resize and
normalisation once per batch, its network once per pass): the analysis cannot beat the slower of the two
limits (a line says which one binds and how close the analysis gets). The decoders are imported before
anything is timed (a one-off cost per process, not per image). The last line is
``analysis ÷ decode limit: R``.

R measures the data path only where the models cost less than decoding: on a GPU, or, on a small CPU, at
the default 32 px, where the four models' eight forward passes on one core (~1,000 images/s on a 2-core
x86) keep up with one decoding process. At ``--input-size 64`` on such a CPU the forward passes are the
limit (~330 images/s) and R is bounded by their ratio to decoding, not by gkt.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODELS = ("test_vit", "test_convnext", "test_byobnet", "test_efficientnet")
CLASSES = 10


def ensure_folder(images: int, seed: int = 0) -> Path:
    """``val/<class>/*.JPEG`` with ``images`` images (+ one per class in ``train/``), built once."""
    root = Path(tempfile.gettempdir()) / f"gkt-bench-decode-{images}-{seed}"
    if (root / "complete").is_file():
        return root
    rng = np.random.default_rng(seed)
    for split, count in (("train", CLASSES), ("val", images)):
        for i in range(count):
            cls = f"n{i % CLASSES:08d}"
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            width, height = int(rng.integers(360, 460)), int(rng.integers(300, 400))
            field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                            Image.BICUBIC)
            pixels = np.asarray(field, dtype=np.int16) + rng.integers(-18, 19, (height, width, 3))
            buf = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            (root / split / cls / f"{split}_{i:06d}.JPEG").write_bytes(buf.getvalue())
    (root / "complete").write_text("ok")
    return root


def model_cfgs(out: Path, input_size: int) -> list[tuple[str, Path]]:
    """A timm ``pretrained_cfg`` per model: its own, with ``input_size`` px and crop_pct 0.875."""
    import timm

    cfgs = []
    for name in MODELS:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        cfg.update(input_size=[3, input_size, input_size], crop_pct=0.875, num_classes=CLASSES,
                   label_names=[f"n{c:08d}" for c in range(CLASSES)])
        path = out / f"{name}.json"
        path.write_text(json.dumps({k: v for k, v in cfg.items() if isinstance(v, (int, float, str, list, tuple))}))
        cfgs.append((name, path))
    return cfgs


class _Files(torch.utils.data.Dataset):
    """The decode limit: torchvision read + decode + antialiased resize + centre crop, nothing else."""

    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, read_file
        from torchvision.transforms.v2 import functional as TF

        image = decode_image(read_file(str(self.files[i])), mode=ImageReadMode.RGB)
        return TF.center_crop(TF.resize(image, [self.size], antialias=True), [self.size, self.size])


def decode_limit(files: list[Path], size: int, workers: int, batch_size: int) -> tuple[float, torch.Tensor]:
    """Images per second, and the decoded images."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    loader = torch.utils.data.DataLoader(_Files(files, size), batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    images = torch.cat(list(loader))
    return len(files) / (time.perf_counter() - start), images


def decode_size(input_size: int) -> int:
    """The size the analysis decodes to (gkt's own rule where it has one)."""
    try:
        from gkt.models.preprocess import Preprocess, decode_size_for
    except ImportError:  # an older gkt
        return math.ceil(input_size / 0.875)
    return decode_size_for([Preprocess(input_size, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=0.875)])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def forward_rate(models: list, images: torch.Tensor, baseline_share: float, batch_size: int,
                 device: torch.device, precision: str = "fp32") -> float:
    """Images per second of the analysis's compute alone: each batch moved to ``device`` and each model's
    input prepared once, its network run on the batch and again (its random-init baseline of the same
    architecture) on ``baseline_share`` of it, autocast in ``precision``."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        synchronize(device)
        start = time.perf_counter()
        for batch in images.split(batch_size):
            batch = batch.to(device)
            for model in models:
                x = model.normalize(batch)
                model.net(x)
                if baseline_share:
                    model.net(x[:max(1, round(len(x) * baseline_share))])
        synchronize(device)
        return len(images) / (time.perf_counter() - start)


def default_workers() -> int:
    try:
        from gkt.data.datasets import default_workers as gkt_workers
    except ImportError:  # a gkt without decoding workers (the comparison with an older checkout)
        return max(1, min(8, len(os.sched_getaffinity(0))))
    return gkt_workers()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--input-size", type=int, default=32, help="the models' input size (default 32 px)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: gkt's default)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--no-random-baseline", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the models run (cpu, cuda, ...)")
    parser.add_argument("--precision", default="fp32", help="the analysis's autocast precision (fp32 | bf16 | fp16)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the numbers to this CSV file")
    parser.add_argument("--tiny", action="store_true", help="dry run: 40 images, 32 px, batches of 10")
    args = parser.parse_args(argv)
    if args.tiny:
        args.images, args.input_size, args.batch_size = 40, 32, 10
    device = torch.device(args.device)
    root = ensure_folder(args.images)
    files = sorted((root / "val").rglob("*.JPEG"))
    workers = args.workers if args.workers is not None else default_workers()
    size = decode_size(args.input_size)
    import torchvision.io  # noqa: F401  (see the docstring: imported before anything is timed)
    from torchvision.transforms.v2 import functional  # noqa: F401

    load = os.getloadavg()[0]
    limit_before, _ = decode_limit(files, size, workers, args.batch_size)

    with tempfile.TemporaryDirectory() as home:
        os.environ["GKT_HOME"] = home  # an empty cache: nothing stored, nothing indexed
        from gkt.analysis.complementary import analyze
        from gkt.data.spec import load_split
        from gkt.models import DataInfo, load_model

        cfgs = model_cfgs(Path(home), args.input_size)
        start = time.perf_counter()
        dataset = load_split(f"folder:{root}", "val")
        info = DataInfo.from_dataset(dataset)
        prepared = time.perf_counter() - start
        models = [load_model(f"timm:{name}?pretrained_cfg={cfg}", info).to(device) for name, cfg in cfgs]
        synchronize(device)
        start = time.perf_counter()
        extra = {"workers": workers} if "workers" in analyze.__code__.co_varnames else {}
        if args.precision != "fp32":
            extra["precision"] = args.precision
        analysis = analyze(models, dataset, device, batch_size=args.batch_size, semantic=False,
                           random_baseline=not args.no_random_baseline, **extra)
        synchronize(device)
        seconds = prepared + time.perf_counter() - start
    limit_after, decoded = decode_limit(files, size, workers, args.batch_size)
    try:
        from gkt.analysis.complementary import RANDOM_BASELINE_SAMPLES as sample
    except ImportError:  # an older gkt: the baseline sees every image
        sample = len(files)
    share = 0.0 if args.no_random_baseline else min(1.0, sample / len(files))
    passes = len(models) * (1 + share)  # per image: each model, and its random-init baseline on a sample
    forward = forward_rate(models, decoded, share, args.batch_size, device, args.precision)
    limit = (limit_before + limit_after) / 2
    rate = len(files) / seconds
    row = {"images": len(files), "input_size": args.input_size, "decode_size": size, "models": " ".join(MODELS),
           "passes": passes, "workers": workers, "device": device_name(device), "precision": args.precision,
           "torch_threads": torch.get_num_threads(), "load_before": round(load, 1),
           "load_after": round(os.getloadavg()[0], 1), "analysis_s": round(seconds, 2),
           "analysis_images_per_s": round(rate, 1), "decode_limit_images_per_s": round(limit, 1),
           "decode_limit_before": round(limit_before, 1), "decode_limit_after": round(limit_after, 1),
           "forward_images_per_s": round(forward, 1), "ratio_to_slower_limit": round(rate / min(forward, limit), 3),
           "ratio_to_decode_limit": round(rate / limit, 3)}
    print(f"{len(files)} JPEGs ~400x350 -> decode size {size}, {len(models)} timm models ({', '.join(MODELS)}) "
          f"at {args.input_size} px on {row['device']} ({args.precision}), {passes:.3g} forward passes per image; "
          f"{workers} worker processes; torch threads {torch.get_num_threads()}; load average {load:.1f} before, "
          f"{row['load_after']:.1f} after")
    print(f"analysis (list + {passes:.3g} passes, empty cache): {seconds:.1f} s = {rate:.0f} images/s "
          f"(samples analysed: {analysis.summary()['samples']})")
    print(f"decode limit (torchvision decode + resize, {workers} workers): {limit:.0f} images/s "
          f"(before {limit_before:.0f}, after {limit_after:.0f})")
    print(f"the models' forward passes alone, on decoded images: {forward:.0f} images/s")
    print(f"analysis ÷ the slower limit ({'forward passes' if forward < limit else 'decoding'}): "
          f"{rate / min(forward, limit):.2f}")
    print(f"analysis ÷ decode limit: {rate / limit:.2f}")
    if args.csv is not None:
        from gkt.core.io import write_csv

        write_csv(args.csv, [row])
    return row


if __name__ == "__main__":
    main()
