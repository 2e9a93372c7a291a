"""What ``gkt improve`` costs beyond the transfers it runs: ranking the zoo, scoring every candidate on the
selection split, certifying, writing — as a share of its total time, on the demo's case.

    uv run python benchmarks/bench_improve.py [--student mlp-14px] [--zoo linear-7px linear ...] [--threads 2]

The demo's case: the one-epoch model of ``--student`` (a zoo recipe trained for one epoch; built and cached
like the demo's) improved label-free from the converged ``--zoo`` models. Side by side in this one run, each
with its own empty caches (so both compute the teachers' outputs once):

1. ``gkt improve`` as a user runs it (one worker, ``--threads`` torch threads): its wall time T;
2. the same candidate transfers alone — loading the data and models, the teachers' outputs, the training
   loop, nothing else (no ranking, no evaluation, no certification, no saving): their wall time S, one after
   another as improve ran them.

``--repeats`` rounds, interleaved; the overhead share is (T − S) / T of the medians, on the last line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="mlp-14px")
    p.add_argument("--zoo", nargs="+", default=["linear-7px", "linear", "mlp-14px", "mlp", "mlp-deep", "cnn-14px"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision  # noqa: F401  (imported by the first resize: a cost both sides would pay, paid up front)
    zoo_dir = os.environ.get("GKT_ZOO_DIR") or str(Path(os.environ.get("GKT_HOME", Path.home() / ".cache/gkt")) / "zoo")

    from gkt.experiments.headroom import HEADROOM_EPOCHS, build_headroom_models
    from gkt.experiments.zoo import build_zoo
    from gkt.models.zoo import get_entry

    build_zoo(tuple(get_entry(n) for n in args.zoo), zoo_dir=Path(zoo_dir), check=False, workers=1)
    student = build_headroom_models([args.student], zoo_dir=zoo_dir)[f"{args.student}@{HEADROOM_EPOCHS}ep"]
    zoo = [f"zoo:{n}" for n in args.zoo]
    from gkt.experiments import improve as improve_module

    totals, alones = [], []
    for _ in range(args.repeats):  # interleaved: a disturbance of the shared machine hits both sides alike
        for cached in (improve_module.load_splits, improve_module._cached_model):  # each side loads afresh
            cached.cache_clear()
        with tempfile.TemporaryDirectory() as home:
            os.environ["GKT_HOME"] = home  # empty prediction store: improve computes every model's outputs once
            start = time.perf_counter()
            decision = improve_module.improve(student, zoo, unlabelled=True, zoo_dir=zoo_dir, out=Path(home) / "runs",
                                              threads=args.threads, say=lambda _: None)
            totals.append(time.perf_counter() - start)
        for cached in (improve_module.load_splits, improve_module._cached_model):
            cached.cache_clear()
        with tempfile.TemporaryDirectory() as home:
            os.environ["GKT_HOME"] = home
            alones.append(transfers_alone(decision.candidates, student, decision.config, zoo_dir))
    total, alone = statistics.median(totals), statistics.median(alones)
    shares = sorted(100 * (t - a) / t for t, a in zip(totals, alones))
    print(f"{decision.summary}\n")
    print(f"{len(decision.candidates)} candidates; per repeat: improve {', '.join(f'{t:.1f}' for t in totals)} s; "
          f"the same transfers alone {', '.join(f'{a:.1f}' for a in alones)} s; overhead per repeat "
          f"{', '.join(f'{x:.1f}' for x in shares)}%; last run: ranking {decision.seconds['ranking']:.1f}s, "
          f"certification {decision.seconds['certification']:.1f}s")
    print(f"improve overhead beyond its transfers (medians of {args.repeats}): {100 * (total - alone) / total:.1f}% "
          f"of {total:.1f}s (transfers alone {alone:.1f}s)")


def transfers_alone(candidates: list[dict], student_spec: str, config: dict, zoo_dir: str) -> float:
    """Wall time of the candidates' transfers on the training loop alone (teachers' outputs cached as in
    improve: computed by the first transfer of each teacher, reused after)."""
    from gkt.core.runtime import seed_everything
    from gkt.engine.loop import LoopConfig, Runtime, TrainLoop
    from gkt.experiments.improve import CONTROL, ImproveConfig, load_models, load_splits
    from gkt.transfer import TransferConfig, decoded_for
    from gkt.transfer.mutual import MUTUAL_METHODS, MutualConfig, MutualTask
    from gkt.transfer.trainer import TransferTrainer

    cfg = ImproveConfig(**{**{k: v for k, v in config.items() if k != "method"}, "lrs": tuple(config["lrs"]),
                           "zoo_dir": zoo_dir})
    device = torch.device("cpu")
    start = time.perf_counter()
    splits = load_splits(cfg.data, cfg.data_dir, cfg.held_out, cfg.val_fraction, cfg.selection_share, cfg.fraction,
                         cfg.seed)
    seconds = time.perf_counter() - start  # loading the data is part of any transfer
    for c in candidates:
        teachers = [] if c["teachers"] == "-" else c["teachers"].split(" + ")
        start = time.perf_counter()
        student, *models = load_models([student_spec, *teachers], cfg)
        settings = TransferConfig(method=c["method"], epochs=c["epochs"], lr=c["lr"], seed=cfg.seed,
                                  batch_size=cfg.batch_size, unlabelled=c["method"] != CONTROL)
        model = student
        if c["method"] in MUTUAL_METHODS:  # both models train, one loop; no evaluation
            transfer_set = decoded_for([student, *models], splits.transfer, splits.selection)[0]
            seed_everything(cfg.seed)
            mutual = MutualConfig(epochs=c["epochs"], lr=c["lr"], batch_size=cfg.batch_size,
                                  unlabelled=MUTUAL_METHODS[c["method"]], seed=cfg.seed)
            task = MutualTask([m.clone().requires_grad_(True) for m in (student, *models)], mutual, device,
                              transfer_set, Runtime(evaluate_every_epoch=False))
            TrainLoop(task, transfer_set, LoopConfig(mutual.epochs, mutual.batch_size, mutual.optimizer, mutual.lr,
                                                     mutual.weight_decay, mutual.momentum, (), mutual.seed,
                                                     schedule="constant"), device).run()
            seconds += time.perf_counter() - start
            continue
        for teacher in models or [student]:
            transfer_set = decoded_for([model, teacher], splits.transfer, splits.selection)[0]
            seed_everything(cfg.seed)
            trainer = TransferTrainer(model.clone().requires_grad_(True), teacher, settings.build_method(), settings,
                                      device, transfer_set, Runtime(evaluate_every_epoch=False))
            trainer.run(lambda loop, losses: None)
            model = trainer.result()
        seconds += time.perf_counter() - start
    return seconds


if __name__ == "__main__":
    main()
