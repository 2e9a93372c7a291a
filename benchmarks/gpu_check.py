"""The steps of ``benchmarks/gpu_check.sh`` in one process (one import of torch and timm for all of them).

    python benchmarks/gpu_check.py --out DIR [--device cuda] [--tiny]

1. ``bench_transfer_224.py``: KL+DP with cached outputs ÷ plain fine-tuning, a ResNet-18 student at
   224 px in bf16 -> ``DIR/transfer.csv``.
2. ``bench_transfer_224.py --augment``: the same pair where photo models train, JPEG photos decoded every
   epoch with photo augmentation (random-resized crop + flip, bicubic, crop_pct 0.875), KL+DP with the
   frozen outputs stored per epoch of crops and with the teacher online ÷ plain fine-tuning with the same
   augmentation -> ``DIR/transfer_augment.csv``.
3. ``bench_decode.py`` with the models on ``--device``: 4 small timm models at 64 px (fp32, the CPU
   benchmark's setting) and at 224 px (bf16) -> ``DIR/decode.csv``.

Each step's CSV is written as soon as it ends; a failing step is reported and the next one still runs
(exit code 1 if any failed). ``--tiny`` shrinks every step to a seconds-long dry run (the tests run it
with ``--device cpu``).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_decode
import bench_transfer_224

from gkt.core.io import write_csv


def steps(device: str, tiny: bool) -> list[tuple[str, str, Callable[[], list[dict]]]]:
    """``(name, csv file, run)`` of every step; ``run`` returns the step's rows."""
    dry = ["--tiny"] if tiny else []
    transfer = ["--device", device, "--precision", "bf16", *dry]
    decode = [["--device", device, "--input-size", "64", "--precision", "fp32", *dry],
              ["--device", device, "--input-size", "224", "--precision", "bf16", "--batch-size", "250", *dry]]
    return [("kl-dp cached vs plain fine-tuning, resnet18 at 224 px, bf16", "transfer.csv",
             lambda: bench_transfer_224.main(transfer)),
            ("kl-dp with photo augmentation, stored vs online outputs vs plain fine-tuning, 224 px, bf16",
             "transfer_augment.csv",
             lambda: bench_transfer_224.main([*transfer, "--augment", *([] if tiny else ["--samples", "4096"])])),
            ("decode benchmark, models on the device", "decode.csv",
             lambda: [bench_decode.main(argv) for argv in decode])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where the CSV files go")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a seconds-long dry run of every step")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, filename, run in steps(args.device, args.tiny):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            rows = run()
        except Exception:  # one failing step must not cost the others' numbers
            traceback.print_exc()
            failed.append(name)
            continue
        write_csv(args.out / filename, rows)
        print(f"== {name}: {time.perf_counter() - start:.0f}s, wrote {args.out / filename}", flush=True)
    if failed:
        print(f"failed: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
