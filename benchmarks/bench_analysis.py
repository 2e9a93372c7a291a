"""Cost of the complementary-knowledge analysis once predictions are stored, and the forward passes
it saves against the pairwise approach (the official code forwards both models of every pair).

    uv run python benchmarks/bench_analysis.py [--models 20] [--samples 10000] [--threads 1]

Synthetic predictions (models of graded accuracy on a balanced label space) stand in for a zoo;
one real forward pass of a small CNN over the same number of 28×28 images prices a pass.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gkt.analysis.complementary import analyze_predictions
from gkt.analysis.semantic import ClassSimilarity
from gkt.data.datasets import TensorImageDataset
from gkt.engine.predictions import (
    Predictions,
    compute_predictions,
    load_predictions,
    save_predictions,
    storage_topk,
)
from gkt.models import Classifier, Preprocess
from gkt.models.classifier import ArchSpec


def synthetic(models: int, samples: int, classes: int, seed: int) -> tuple[list[Predictions], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % classes
    preds = []
    for m in range(models):
        logits = torch.randn(samples, classes, generator=g)
        logits[torch.arange(samples), labels] += 1.0 + 3.0 * m / models  # accuracy grows with m
        preds.append(Predictions.from_logits(logits, labels, f"m{m}", topk=storage_topk(classes)))
    return preds, labels


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and spread (min–max half-range) in seconds over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (max(times) - min(times)) / 2


def bench_label_space(m: int, n: int, classes: int, args: argparse.Namespace) -> None:
    """Time the pairwise statistics and the store reads for one label-space size."""
    preds, _ = synthetic(m + args.random_teachers, n, classes, args.seed)
    models, random = preds[:m], preds[m:]
    emb = torch.nn.functional.normalize(torch.randn(classes, 384, generator=torch.Generator().manual_seed(1)), dim=1)
    sim = ClassSimilarity("random", (emb @ emb.T).double())
    names = [f"c{k}" for k in range(classes)]
    med, spread = timed(lambda: analyze_predictions(models, names, random_preds=random, similarity=sim), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{p.model_name}.safetensors" for p in models]
        for p, path in zip(models, paths):
            save_predictions(p, path, "synthetic")
        size = sum(path.stat().st_size for path in paths)
        load_med, load_spread = timed(lambda: [load_predictions(path) for path in paths], args.repeats)
    kind = "full float32 logits" if storage_topk(classes) is None else f"top-{models[0].topk_logits.shape[1]} + probs"
    print(f"{classes:>5} classes ({kind}): pairwise statistics for {m * (m - 1)} ordered pairs "
          f"(+ {args.random_teachers} random teachers, semantic) {1000 * med:.0f} ± {1000 * spread:.0f} ms; "
          f"loading {m} stored files ({size / 2**20:.1f} MiB) {1000 * load_med:.0f} ± {1000 * load_spread:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--random-teachers", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    m, n = args.models, args.samples
    print(f"{m} models x {n} samples, {args.threads} thread(s), median of {args.repeats} runs (± half-range)\n")

    for classes in (10, 1000):
        bench_label_space(m, n, classes, args)

    torch.manual_seed(args.seed)
    cnn = Classifier.create(ArchSpec("zoo", "cnn", 10, 1, 28, {"channels": [16, 32]}), Preprocess(28, 1, (0.3,), (0.3,)),
                            [str(c) for c in range(10)], name="cnn")
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    data = TensorImageDataset("bench", images, torch.arange(n) % 10, [str(c) for c in range(10)])
    pass_s, pass_spread = timed(lambda: compute_predictions(cnn, data, torch.device("cpu"), batch_size=500), 2)
    ordered, unordered = 2 * m * (m - 1), m * (m - 1)
    print(f"\nforward passes: prediction store {m} (+{args.random_teachers} random teachers) vs pairwise "
          f"{ordered} (both models of each ordered pair; {unordered} if each unordered pair is run once): "
          f"{ordered / m:.0f}x ({unordered / m:.0f}x) fewer")
    print(f"one forward pass of a small CNN over {n} images: {pass_s:.2f} ± {pass_spread:.2f} s -> store "
          f"{m * pass_s:.0f} s vs pairwise {ordered * pass_s:.0f} s ({unordered * pass_s:.0f} s), once; "
          "a later analysis reuses the store and costs no forward pass")


if __name__ == "__main__":
    main()
