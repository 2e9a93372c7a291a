"""``gkt transfer``: single-teacher knowledge transfer into a pretrained student."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from gkt.cli import register_verb
from gkt.report import format_table
from gkt.utils import GktError, read_json, write_json

# Options a resumed run takes from the interrupted run (everything but --epochs).
RESUMED = ("student", "teacher", "method", "data", "fraction", "lr", "batch_size", "temperature", "method_arg",
           "weight_decay", "augment", "unlabelled", "seed")


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.transfer import DEFAULT_LR, describe_methods

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "methods:\n" + describe_methods()
    p.add_argument("--student", help="model spec of the pretrained student (zoo:NAME, timm:..., file:PATH)")
    p.add_argument("--teacher", help="model spec of the teacher (same label space)")
    p.add_argument("--method", default="kl-dp", help="transfer method (default: kl-dp; list below)")
    p.add_argument("--method-arg", action="append", default=[], metavar="K=V",
                   help="method hyperparameter, repeatable (e.g. --method-arg lam=0.7)")
    p.add_argument("--data", default="fmnist", help="data spec (default: fmnist)")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="stratified share of the train split used as transfer set (default: 0.1)")
    p.add_argument("--epochs", type=int, default=None, help="epochs over the transfer set (default: 5)")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"SGD learning rate (default: {DEFAULT_LR:g})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T (default: 1)")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--augment", nargs="*", default=[], metavar="NAME",
                   help="batch augmentations applied once, seen by every model (flip, crop, erase; default none)")
    p.add_argument("--unlabelled", action="store_true",
                   help="treat the transfer set as unlabelled: only label-free methods are allowed")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted transfer run from its last finished epoch (into a new run "
                        "directory; --epochs may extend it, other options come from the run)")


def _parse_method_args(items: list[str]) -> dict[str, str]:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GktError(f"--method-arg expects K=V, got {item!r}")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def _resume_options(args: argparse.Namespace) -> dict[str, Any]:
    """The interrupted run's options and its training state; conflicting options are an error."""
    from gkt.transfer import load_state

    old = Path(args.resume)
    if not (old / "config.json").is_file():
        raise GktError(f"--resume {old}: not a run directory (no config.json)")
    config = read_json(old / "config.json")
    if config.get("command") != "transfer":
        raise GktError(f"--resume {old}: a `{config.get('command')}` run, not a transfer run")
    for key in ("student", "teacher"):
        given = getattr(args, key)
        if given is not None and given != config[key]:
            raise GktError(f"--resume {old}: that run used --{key} {config[key]}, not {given}")
    for key in RESUMED:
        setattr(args, key, config[key])
    args.epochs = args.epochs or config["epochs"]
    return load_state(old)


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


@register_verb("transfer", "transfer knowledge from a teacher into a pretrained student", _configure)
def transfer(args: argparse.Namespace) -> int:
    from gkt.data import load_split, stratified_subset
    from gkt.models import DataInfo, load_model
    from gkt.transfer import TransferConfig, create_method, run_transfer

    create_method(args.method)  # unknown names fail before anything is loaded
    resume = _resume_options(args) if args.resume else None
    if args.student is None or args.teacher is None:
        raise GktError("give --student SPEC and --teacher SPEC (or --resume RUN_DIR)")
    config = TransferConfig(method=args.method, method_args=_parse_method_args(args.method_arg),
                            epochs=args.epochs or TransferConfig.epochs, lr=args.lr, weight_decay=args.weight_decay,
                            batch_size=args.batch_size, temperature=args.temperature, augment=tuple(args.augment),
                            seed=args.seed, unlabelled=args.unlabelled)
    config.build_method()  # bad method arguments / labels on unlabelled data fail early
    train = load_split(args.data, "train", data_dir=args.data_dir, val_fraction=0)
    transfer_set = stratified_subset(train, fraction=args.fraction, seed=args.seed)
    test_set = load_split(args.data, "test", data_dir=args.data_dir)
    info = DataInfo.from_dataset(train)
    student = load_model(args.student, info, args.zoo_dir)
    teacher = load_model(args.teacher, info, args.zoo_dir)
    write_json(args.run_dir / "resolved_config.json", {
        **config.to_dict(), "student": args.student, "teacher": args.teacher, "data": args.data,
        "transfer_set": {"name": transfer_set.name, "size": len(transfer_set), "fingerprint": transfer_set.fingerprint()},
        "test_set": {"name": test_set.name, "size": len(test_set)}, "device": str(args.torch_device),
        "resumed_from": args.resume})
    print(f"transfer {args.teacher} → {args.student} with {args.method} on {len(transfer_set)} samples "
          f"({transfer_set.name}), {config.epochs} epochs, lr {config.lr:g}, device {args.torch_device}"
          + (f", resuming epoch {resume['epoch']} of {args.resume}" if resume else ""))
    outcome = run_transfer(student, teacher, transfer_set, test_set, config, args.torch_device, args.run_dir,
                           resume=resume)
    columns = ["epoch", "train_loss", "acc", "delta_transf", "knowledge_gain", "knowledge_loss", "delta_rho_pos",
               "delta_rho_neg"]
    print(format_table([{c: (row.get(c, "-") if c in ("epoch", "train_loss") else _fmt(row[c])) for c in columns}
                        for row in outcome.history]))
    final = outcome.final
    rates = "  ".join(f"{k.removeprefix('transfer_rate_')}% {_fmt(v)}" for k, v in final.items()
                      if k.startswith("transfer_rate_"))
    print(f"\nteacher {_fmt(final['acc_teacher'])}%  student {_fmt(final['acc_student_before'])}% → "
          f"{_fmt(final['acc'])}%  Δtransf {100 * final['delta_transf']:+.2f}  gain {_fmt(final['knowledge_gain'])}  "
          f"loss {_fmt(final['knowledge_loss'])} (points on {len(test_set)} test samples)")
    print(f"transfer rate of the teacher's positive flips, classes holding top-X%: {rates}")
    if final["partition_quality"]:
        pq = final["partition_quality"]
        print(f"partition on the transfer set: {_fmt(pq['pos_flips_to_teacher'])}% of positive flips and "
              f"{_fmt(pq['neg_flips_to_teacher'])}% of negative flips go to the teacher "
              f"({_fmt(pq['samples_to_teacher'])}% of all samples; paper: 72% / 9%)")
    print(f"transferred student: {final['checkpoint']}\nrun directory: {args.run_dir}")
    return 0
