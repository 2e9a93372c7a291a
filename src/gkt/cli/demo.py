"""``gkt demo``: the end-to-end demo on the embedded default."""

from __future__ import annotations

import argparse
import time

from gkt.cli import register_verb


@register_verb("demo", "end-to-end demo: build the embedded zoo and show it")
def demo(args: argparse.Namespace) -> int:
    from gkt.cli.zoo import print_zoo
    from gkt.zoo import build_zoo

    start = time.perf_counter()
    print("== gkt demo: step 1/1 — the embedded zoo (trained once, then cached) ==")
    records = build_zoo(zoo_dir=args.zoo_dir, device=args.torch_device, data_dir=args.data_dir)
    print_zoo(records, args.run_dir)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s; run directory: {args.run_dir}")
    return 0
