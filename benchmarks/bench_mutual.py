"""Mutual transfer's throughput against its limit: K plain fine-tuning steps (one forward and backward per
model per step, cross-entropy, nothing else).

    uv run python benchmarks/bench_mutual.py [--models mlp mlp-deep cnn-14px] [--threads 1]

A mutual step of K models costs their K forwards and backwards (the limit) plus the frozen copies' outputs
(read from the output cache) and K KL+DP losses whose targets come from the same forward pass. Models are
zoo architectures freshly initialised (throughput does not depend on the weights), the data Fashion-MNIST
train images when installed, else random images of the same shape. Both variants run ``--repeats`` epochs,
interleaved; the last line gives mutual ÷ K plain fine-tuning steps (medians).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transfer import interleaved_times, plain_finetune_epoch, transfer_data, zoo_architecture  # noqa: E402

from gkt.core.runtime import resolve_device  # noqa: E402
from gkt.engine.loop import LoopConfig, Runtime, TrainLoop  # noqa: E402
from gkt.transfer.mutual import MutualConfig, MutualTask  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp", "mlp-deep", "cnn-14px"])
    p.add_argument("--samples", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = transfer_data(args.samples)
    os.environ["GKT_HOME"] = tempfile.mkdtemp(prefix="gkt-bench-")  # random models' outputs stay out of the cache
    models = [zoo_architecture(name, i).to(device) for i, name in enumerate(args.models)]
    config = MutualConfig(unlabelled=True, batch_size=args.batch_size)
    task = MutualTask([m.clone() for m in models], config, device, data, Runtime())
    loop = TrainLoop(task, data, LoopConfig(1, args.batch_size, "sgd", config.lr, config.weight_decay, config.momentum,
                                            (), 0, schedule="constant"), device, Runtime(), desc="mutual")
    plain = [plain_finetune_epoch(m.clone(), data, args.batch_size, device, None) for m in models]

    def plain_k() -> None:  # K plain fine-tuning epochs: one forward and backward per model per step
        for epoch in plain:
            epoch()

    variants = {"K plain fine-tuning steps (limit)": plain_k, "mutual step, frozen outputs cached": loop.train_epoch}
    times = interleaved_times(variants, args.repeats, device)
    samples = (len(data) // args.batch_size) * args.batch_size
    rate = {name: samples / statistics.median(ts) for name, ts in times.items()}
    limit = rate["K plain fine-tuning steps (limit)"]
    print(f"{len(models)} models ({', '.join(args.models)}), {samples} samples/epoch ({data.name}), batch "
          f"{args.batch_size}, device {device}, {torch.get_num_threads()} thread(s), median of {args.repeats} epochs")
    for name, r in rate.items():
        print(f"  {name:36s} {r:9.0f} samples/s   ÷ limit = {r / limit:.2f}")
    print(f"mutual ÷ K plain fine-tuning steps (medians): {rate['mutual step, frozen outputs cached'] / limit:.2f}")


if __name__ == "__main__":
    main()
