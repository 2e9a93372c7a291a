"""KL+DP's data partition: gkt's vectorised mask against a per-sample Python loop (the official code's way).

    uv run python benchmarks/bench_dp_mask.py [--classes 10 1000] [--batch 128 1024] [--threads 1]

Both decide, per sample, whether the teacher's true-class probability beats the frozen student's and
build the per-sample KL target; the script checks they agree and prints the time ratio.
"""

from __future__ import annotations

import argparse

import torch
from bench_analysis import timed  # benchmarks/ is the script's directory

from gkt.transfer import create_method
from gkt.transfer.base import FROZEN_LOGITS, TEACHER_LOGITS, Step, kl_loss


def loop_partition(student: torch.Tensor, teacher: torch.Tensor, frozen: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Sample by sample: compare confidences, pick the target, average the per-sample KL."""
    losses = []
    for i in range(len(labels)):
        p_teacher = teacher[i].softmax(-1)[labels[i]]
        p_frozen = frozen[i].softmax(-1)[labels[i]]
        target = teacher[i] if p_teacher > p_frozen else frozen[i]
        losses.append(kl_loss(student[i:i + 1], target[None], 1.0))
    return torch.stack(losses).mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    method = create_method("kl-dp")
    g = torch.Generator().manual_seed(0)
    print(f"{args.threads} thread(s), median of {args.repeats} runs")
    for classes in args.classes:
        for batch in args.batch:
            student, teacher, frozen = (torch.randn(batch, classes, generator=g) * 2 for _ in range(3))
            labels = torch.randint(0, classes, (batch,), generator=g)
            step = Step(student, {TEACHER_LOGITS: teacher, FROZEN_LOGITS: frozen}, torch.arange(batch), g, labels)
            vectorised = method(step)["kl"]
            looped = loop_partition(student, teacher, frozen, labels)
            assert torch.allclose(vectorised, looped, rtol=1e-4), (vectorised, looped)
            fast = timed(lambda: method(step), args.repeats)[0]
            slow = timed(lambda: loop_partition(student, teacher, frozen, labels), args.repeats)[0]
            print(f"  {classes:5d} classes, batch {batch:5d}: vectorised {1e3 * fast:7.3f} ms, per-sample loop "
                  f"{1e3 * slow:8.2f} ms -> {slow / fast:6.0f}x faster (same loss: {vectorised.item():.5f})")


if __name__ == "__main__":
    main()
