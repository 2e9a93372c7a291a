"""Transfer throughput against its limit: plain fine-tuning of the student on the same data.

    uv run python benchmarks/bench_transfer.py [--students mlp mlp-deep cnn-14px] [--teacher resnet] [--threads 1]

A KL+DP step costs the student's forward+backward (the limit) plus the teacher's and the frozen
student's forwards; the output cache removes the latter. Models are zoo architectures freshly
initialised (throughput does not depend on the weights), the data are Fashion-MNIST train images when
they are installed, else random images of the same shape. Every variant runs ``--repeats`` epochs,
interleaved, and reports the median samples/s and the best epoch's (the least disturbed one on a shared
machine); the ratios are measured in this one run. Each student is measured in turn; the last line gives
every student's cached KL+DP ÷ plain fine-tuning (medians).

``--augment``: the same with photo augmentation (``--augment photo``: a random-resized crop and flip drawn
while decoding) on the same images stored as an image folder (PNG files, decoded every epoch, as photos are):
plain fine-tuning with that augmentation against KL+DP reading the frozen models' stored outputs on the
epoch's crops (FKD-style; built once per epoch of crops, ``--augment-epochs`` sets of them, its time printed
apart) and KL+DP running the teacher and the frozen student on every step (teacher online).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from gkt.core.errors import GktError
from gkt.core.runtime import resolve_device
from gkt.data.datasets import ImageDataset, TensorImageDataset, iterate_batches
from gkt.data.fmnist import FASHION_MNIST_CLASSES
from gkt.data.folder import load_image_folder
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.engine.loop import LoopConfig, Runtime, SupervisedTask, TrainLoop, make_optimizer
from gkt.models import Classifier
from gkt.models.preprocess import to_unit_float
from gkt.models.zoo import get_entry
from gkt.transfer import TransferConfig, decoded_for
from gkt.transfer.trainer import TransferTrainer


def zoo_architecture(name: str, seed: int) -> Classifier:
    entry = get_entry(name)
    torch.manual_seed(seed)
    return Classifier.create(entry.arch_spec(), entry.preprocess(), FASHION_MNIST_CLASSES, name=name)


def transfer_data(samples: int) -> TensorImageDataset:
    try:
        return stratified_subset(load_split("fmnist", "train"), per_class=samples // 10, seed=0)
    except GktError:
        g = torch.Generator().manual_seed(0)
        return TensorImageDataset("random", torch.randint(0, 256, (samples, 1, 28, 28), generator=g, dtype=torch.uint8),
                                  torch.arange(samples) % 10, FASHION_MNIST_CLASSES)


def plain_finetune_epoch(student: Classifier, data: TensorImageDataset, batch_size: int, device: torch.device,
                         autocast: torch.dtype | None) -> Callable[[], None]:
    """The limit: the student's own forward+backward+step with cross-entropy, nothing else."""
    optimizer = make_optimizer(student.parameters(), "sgd", 3e-4, 1e-3)
    generator = torch.Generator().manual_seed(0)

    def epoch() -> None:
        student.train()
        for images, labels, _ in iterate_batches(data, batch_size, shuffle=True, generator=generator, drop_last=True):
            x = to_unit_float(images.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = F.cross_entropy(student(x), labels.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def interleaved_times(variants: dict[str, Callable[[], object]], repeats: int, device: torch.device
                      ) -> dict[str, list[float]]:
    """Seconds of each variant's call, ``repeats`` rounds interleaved (after one warm-up call each), so a
    disturbance of a shared machine hits every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", nargs="+", default=["mlp", "mlp-deep", "cnn-14px"],
                   help="zoo architectures trained as students (default: the demo's three student families)")
    p.add_argument("--teacher", default="resnet")
    p.add_argument("--samples", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--loader-workers", type=int, default=None, help="--augment: decoding processes (default: gkt's)")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (CPU: only where it is faster)")
    p.add_argument("--no-uncached", action="store_true", help="skip the (slow) outputs-computed-per-step variant")
    p.add_argument("--augment", action="store_true",
                   help="photo augmentation on an image folder of the same images (see the module docstring)")
    p.add_argument("--augment-epochs", type=int, default=1,
                   help="--augment: sets of crops whose stored outputs the cached variant reads (epoch e uses e mod N)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = transfer_data(args.samples)
    os.environ["GKT_HOME"] = tempfile.mkdtemp(prefix="gkt-bench-")  # random models' outputs stay out of the cache
    teacher = zoo_architecture(args.teacher, 2).to(device)
    if args.augment:
        folder = as_image_folder(data, Path(os.environ["GKT_HOME"]) / "images")
        ratios = {name: measure_augmented(zoo_architecture(name, 1).to(device), teacher, folder, device, args)
                  for name in args.students}
        print("cached kl-dp with photo augmentation ÷ plain fine-tuning with it (medians): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        return
    ratios = {name: measure(zoo_architecture(name, 1).to(device), teacher, data, device, args)
              for name in args.students}
    print("cached kl-dp ÷ plain fine-tuning (medians): " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


def measure(student: Classifier, teacher: Classifier, data: TensorImageDataset, device: torch.device,
            args: argparse.Namespace) -> float:
    """Time every variant for one student; print the rates; return cached KL+DP ÷ the limit (medians)."""
    config = TransferConfig(method="kl-dp", epochs=1, batch_size=args.batch_size)
    start = time.perf_counter()
    cached = TransferTrainer(student.clone(), teacher, config.build_method(), config, device, data, Runtime())
    cache_build = time.perf_counter() - start
    variants: dict[str, Callable[[], object]] = {
        "plain fine-tuning (limit)": plain_finetune_epoch(student.clone(), data, args.batch_size, device, None),
        "kl-dp, outputs cached": cached.train_epoch,
    }
    if not args.no_uncached:
        variants["kl-dp, outputs computed per step"] = TransferTrainer(
            student.clone(), teacher, config.build_method(), config, device, data, Runtime(cache_outputs=False)).train_epoch
    if args.bf16:
        variants["plain fine-tuning, bf16 autocast"] = plain_finetune_epoch(student.clone(), data, args.batch_size,
                                                                            device, torch.bfloat16)
        variants["kl-dp, cached, bf16 autocast"] = TransferTrainer(
            student.clone(), teacher, config.build_method(), config, device, data, Runtime(precision="bf16")).train_epoch
    times = interleaved_times(variants, args.repeats, device)
    samples = (len(data) // args.batch_size) * args.batch_size
    rate = {name: samples / statistics.median(ts) for name, ts in times.items()}
    best = {name: samples / min(ts) for name, ts in times.items()}  # the least disturbed epoch (shared machines)
    limit, best_limit = rate["plain fine-tuning (limit)"], best["plain fine-tuning (limit)"]
    print(f"student {student.name} ({student.num_parameters():,} params), teacher {args.teacher} "
          f"({teacher.num_parameters():,} params), {samples} samples/epoch ({data.name}), batch {args.batch_size}, "
          f"device {device}, {torch.get_num_threads()} thread(s), median of {args.repeats} epochs")
    print(f"one-off cache build (teacher + frozen student over the transfer set): {cache_build:.2f}s")
    for name, r in rate.items():
        spread = (max(times[name]) - min(times[name])) / 2 / statistics.median(times[name])
        print(f"  {name:36s} {r:9.0f} samples/s (±{100 * spread:.0f}%)   ÷ limit = {r / limit:.2f}   "
              f"best epoch {best[name]:9.0f} samples/s ÷ best limit = {best[name] / best_limit:.2f}")
    return rate["kl-dp, outputs cached"] / limit


def as_image_folder(data: TensorImageDataset, root: Path) -> ImageDataset:
    """``data`` written as PNG files in the ImageNet layout, loaded as a folder (decoded every epoch)."""
    from PIL import Image

    names = [f"{k:02d}-{name.replace('/', '-')}" for k, name in enumerate(data.class_names)]  # sorted as the labels
    for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(root / names[label] / f"{i}.png")
    return load_image_folder(root, image_size=data.image_shape[-1], channels=data.image_shape[0])


def measure_augmented(student: Classifier, teacher: Classifier, folder: ImageDataset, device: torch.device,
                      args: argparse.Namespace) -> float:
    """``--augment``: plain fine-tuning with photo augmentation (the limit), KL+DP reading the stored outputs of
    the frozen models on each epoch's crops, and KL+DP computing them every step; returns cached ÷ limit."""
    config = TransferConfig(method="kl-dp", epochs=10 ** 6, batch_size=args.batch_size, augment=("photo",),
                            augment_epochs=args.augment_epochs)
    data, _ = decoded_for([student, teacher], folder, folder)
    runtime = Runtime(loader_workers=args.loader_workers)
    plain = TrainLoop(SupervisedTask(student.clone()), data.at_decode_plan((student.preprocess.view,)),
                      LoopConfig(config.epochs, args.batch_size, "sgd", 3e-4, 1e-3, 0.9, ("photo",), 0,
                                 crop_epochs=args.augment_epochs), device, runtime)
    cached = TransferTrainer(student.clone(), teacher, config.build_method(), config, device, data, runtime)
    start = time.perf_counter()
    for epoch in range(args.augment_epochs):  # the stored outputs of every set of crops, built once
        cached.task.begin_epoch(cached.epoch_data(epoch))
    cache_build = time.perf_counter() - start
    variants: dict[str, Callable[[], object]] = {"plain fine-tuning + photo (limit)": plain.train_epoch,
                                                 "kl-dp + photo, outputs cached": cached.train_epoch}
    if not args.no_uncached:
        variants["kl-dp + photo, teacher online"] = TransferTrainer(
            student.clone(), teacher, config.build_method(), config, device, data,
            Runtime(cache_outputs=False, loader_workers=args.loader_workers)).train_epoch
    times = interleaved_times(variants, args.repeats, device)
    samples = (len(data) // args.batch_size) * args.batch_size
    rate = {name: samples / statistics.median(ts) for name, ts in times.items()}
    limit = rate["plain fine-tuning + photo (limit)"]
    print(f"student {student.name} ({student.num_parameters():,} params), teacher {teacher.name} "
          f"({teacher.num_parameters():,} params), {samples} images/epoch decoded from PNG files with photo "
          f"augmentation, batch {args.batch_size}, device {device}, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats} epochs")
    print(f"one-off: frozen outputs on {args.augment_epochs} epoch(s) of crops stored in {cache_build:.2f}s")
    for name, r in rate.items():
        spread = (max(times[name]) - min(times[name])) / 2 / statistics.median(times[name])
        print(f"  {name:36s} {r:9.0f} samples/s (±{100 * spread:.0f}%)   ÷ limit = {r / limit:.2f}")
    return rate["kl-dp + photo, outputs cached"] / limit


if __name__ == "__main__":
    main()
