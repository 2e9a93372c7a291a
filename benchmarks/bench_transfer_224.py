"""KL+DP with cached outputs against plain fine-tuning, ImageNet-size: a ResNet-18 student at 224 px.

    python benchmarks/bench_transfer_224.py [--device cuda] [--precision bf16] [--csv FILE] [--tiny]

Both variants run through gkt's one training loop with the same optimiser, batch size, precision and
memory format: plain fine-tuning is the student's cross-entropy training (the limit), KL+DP trains the
same student towards a teacher (timm ``resnet50``) with the teacher's and the frozen student's outputs
cached once beforehand (the one-off cache build is timed apart). Models are randomly initialised timm
networks (throughput does not depend on the weights); the images are random ``uint8`` 224×224 in
memory, so neither variant waits on decoding. Epochs alternate between the variants (one warm-up
each, then ``--repeats``); the median and the best epoch's samples/s are reported, and the ratio
``kl-dp cached ÷ plain fine-tuning`` (target: close to 1). ``--tiny`` (32 px, a few dozen images) is the
seconds-long dry run the tests use on CPU.

``--augment``: where photo models are trained: JPEG photos of varied sizes in an image folder, decoded every
epoch with photo augmentation (a random-resized crop and flip, the same box for both models, each at its own
size with bicubic resampling and crop_pct 0.875 as timm's ResNets), plain fine-tuning with it against KL+DP
reading the stored outputs on the epoch's crops (built once, timed apart) and KL+DP with the teacher online.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from photos import photo_jpegs

from gkt.core.io import write_csv
from gkt.core.runtime import resolve_device
from gkt.data.datasets import TensorImageDataset
from gkt.engine.loop import LoopConfig, Runtime, SupervisedTask, TrainLoop
from gkt.models.classifier import ArchSpec, Classifier
from gkt.models.preprocess import Preprocess
from gkt.transfer import TransferConfig
from gkt.transfer.trainer import TransferTrainer

CLASSES = [f"c{i}" for i in range(100)]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timm_model(arch: str, size: int, seed: int) -> Classifier:
    torch.manual_seed(seed)
    return Classifier.create(ArchSpec("timm", arch, len(CLASSES), 3, size),
                             Preprocess(size, 3, IMAGENET_MEAN, IMAGENET_STD), CLASSES, name=arch)


def random_images(samples: int, size: int) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset("random", torch.randint(0, 256, (samples, 3, size, size), generator=g, dtype=torch.uint8),
                              torch.arange(samples) % len(CLASSES), CLASSES)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_epochs(variants: dict[str, Callable[[], object]], repeats: int, device: torch.device
                       ) -> dict[str, list[float]]:
    """Seconds of each variant's epoch: one warm-up each (cuDNN autotuning, allocator), then ``repeats`` rounds
    with the variants alternating, the device synchronised around every epoch."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            synchronize(device)
            t = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", help="autocast precision of both variants (fp32 | bf16 | fp16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--csv", type=Path, default=None, help="also write the numbers to this CSV file")
    p.add_argument("--tiny", action="store_true", help="dry run: 32 px, 48 images, batches of 16, one repeat")
    p.add_argument("--augment", action="store_true", help="photo augmentation on JPEG files (module docstring)")
    p.add_argument("--loader-workers", type=int, default=None, help="--augment: decoding processes (default: gkt's)")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.samples, args.batch_size, args.repeats = 32, 48, 16, 1
    device = resolve_device(args.device)
    os.environ["GKT_HOME"] = tempfile.mkdtemp(prefix="gkt-bench-")  # random models' outputs stay out of the cache
    if args.augment:
        return augmented(args, device)
    data = random_images(args.samples, args.size)
    student, teacher = timm_model(args.student, args.size, 1), timm_model(args.teacher, args.size, 2)
    runtime = Runtime(precision=args.precision, channels_last=args.channels_last, evaluate_every_epoch=False)
    config = TransferConfig(method="kl-dp", epochs=1, batch_size=args.batch_size)
    synchronize(device)
    start = time.perf_counter()
    transfer = TransferTrainer(student.clone(), teacher, config.build_method(), config, device, data, runtime)
    synchronize(device)
    cache_build = time.perf_counter() - start
    loop_config = LoopConfig(1, config.batch_size, config.optimizer, config.lr, config.weight_decay, config.momentum,
                             tuple(config.augment), config.seed, schedule="constant")
    plain = TrainLoop(SupervisedTask(student.clone()), data, loop_config, device, runtime, desc="fine-tune")
    variants: dict[str, Callable[[], object]] = {"plain fine-tuning (limit)": plain.train_epoch,
                                                 "kl-dp, outputs cached": transfer.train_epoch}
    times = interleaved_epochs(variants, args.repeats, device)
    samples = (len(data) // args.batch_size) * args.batch_size
    limit = samples / statistics.median(times["plain fine-tuning (limit)"])
    best_limit = samples / min(times["plain fine-tuning (limit)"])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for name, ts in times.items():
        rate, best = samples / statistics.median(ts), samples / min(ts)
        rows.append({"variant": name, "samples_per_s": round(rate, 1), "best_samples_per_s": round(best, 1),
                     "ratio_to_limit": round(rate / limit, 3), "best_ratio_to_limit": round(best / best_limit, 3),
                     "student": args.student, "teacher": args.teacher, "size": args.size,
                     "precision": args.precision, "channels_last": args.channels_last, "batch_size": args.batch_size,
                     "samples_per_epoch": samples, "repeats": args.repeats, "cache_build_s": round(cache_build, 2),
                     "device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads()})
    print(f"student {args.student} ({student.num_parameters():,} params), teacher {args.teacher} "
          f"({teacher.num_parameters():,} params), {args.size} px, {args.precision}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, batch {args.batch_size}, {samples} samples/epoch, "
          f"device {device_name}, median of {args.repeats} epochs")
    print(f"one-off cache build (teacher + frozen student over the transfer set): {cache_build:.2f}s")
    for row in rows:
        print(f"  {row['variant']:28s} {row['samples_per_s']:9.0f} samples/s   ÷ limit = {row['ratio_to_limit']:.2f}"
              f"   (best epoch {row['best_samples_per_s']:.0f} samples/s, "
              f"÷ best limit {row['best_ratio_to_limit']:.2f})")
    print(f"kl-dp cached ÷ plain fine-tuning: {rows[1]['ratio_to_limit']:.2f}")
    if args.csv is not None:
        write_csv(args.csv, rows)
    return rows


def augmented(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """``--augment``: the three variants with photo augmentation on JPEG files; returns the CSV rows."""
    from gkt.data.folder import load_image_folder
    from gkt.transfer import decoded_for

    classes = min(len(CLASSES), max(2, args.samples // 8))  # every class folder holds images
    folder = load_image_folder(photo_jpegs(Path(os.environ["GKT_HOME"]) / "photos", args.samples, classes,
                                           (160, 480), quality=90))
    student, teacher = (Classifier.create(ArchSpec("timm", arch, classes, 3, args.size),
                                          Preprocess(args.size, 3, IMAGENET_MEAN, IMAGENET_STD, 0.875, "bicubic"),
                                          folder.class_names, name=arch)
                        for arch in (args.student, args.teacher))
    data, _ = decoded_for([student, teacher], folder, folder)
    runtime = Runtime(precision=args.precision, channels_last=args.channels_last, evaluate_every_epoch=False,
                      loader_workers=args.loader_workers)
    config = TransferConfig(method="kl-dp", epochs=10 ** 6, batch_size=args.batch_size, augment=("photo",),
                            augment_epochs=1)
    transfer = TransferTrainer(student.clone(), teacher, config.build_method(), config, device, data, runtime)
    synchronize(device)
    start = time.perf_counter()
    transfer.task.begin_epoch(transfer.epoch_data(0))  # the stored outputs of the (one) set of crops
    synchronize(device)
    cache_build = time.perf_counter() - start
    loop_config = LoopConfig(config.epochs, config.batch_size, config.optimizer, config.lr, config.weight_decay,
                             config.momentum, ("photo",), config.seed, schedule="constant", crop_epochs=1)
    plain = TrainLoop(SupervisedTask(student.clone()), data.at_decode_plan((student.preprocess.view,)),
                      loop_config, device, runtime, desc="fine-tune")
    online = TransferTrainer(student.clone(), teacher, config.build_method(), config, device, data,
                             Runtime(cache_outputs=False, precision=args.precision, channels_last=args.channels_last,
                                     evaluate_every_epoch=False, loader_workers=args.loader_workers))
    variants: dict[str, Callable[[], object]] = {"plain fine-tuning + photo (limit)": plain.train_epoch,
                                                 "kl-dp + photo, outputs cached": transfer.train_epoch,
                                                 "kl-dp + photo, teacher online": online.train_epoch}
    times = interleaved_epochs(variants, args.repeats, device)
    samples = (len(data) // args.batch_size) * args.batch_size
    limit = samples / statistics.median(times["plain fine-tuning + photo (limit)"])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [{"variant": name, "samples_per_s": round(samples / statistics.median(ts), 1),
             "ratio_to_limit": round(samples / statistics.median(ts) / limit, 3), "student": args.student,
             "teacher": args.teacher, "size": args.size, "precision": args.precision, "batch_size": args.batch_size,
             "samples_per_epoch": samples, "repeats": args.repeats, "cache_build_s": round(cache_build, 2),
             "loader_workers": args.loader_workers, "device": device_name, "torch": torch.__version__}
            for name, ts in times.items()]
    print(f"photo augmentation on {len(data)} JPEGs: student {args.student}, teacher {args.teacher}, {args.size} px "
          f"bicubic, {args.precision}, batch {args.batch_size}, device {device_name}, median of {args.repeats} epochs")
    print(f"one-off: frozen outputs on one epoch of crops stored in {cache_build:.2f}s")
    for row in rows:
        print(f"  {row['variant']:36s} {row['samples_per_s']:9.0f} samples/s   ÷ limit = {row['ratio_to_limit']:.2f}")
    print(f"kl-dp + photo cached ÷ plain fine-tuning + photo: {rows[1]['ratio_to_limit']:.2f}, "
          f"teacher online: {rows[2]['ratio_to_limit']:.2f}")
    if args.csv is not None:
        write_csv(args.csv, rows)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
