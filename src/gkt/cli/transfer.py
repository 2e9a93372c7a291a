"""``gkt transfer``: knowledge transfer into a pretrained student from one teacher, or from several
(``--multi sequential|parallel|soup|all``)."""

from __future__ import annotations

import argparse
import contextlib
import math
from typing import Any

from gkt.cli import register_verb
from gkt.cli.config import add_config_option, resolved_config
from gkt.cli.tracking import add_tracking_options, tracking
from gkt.core.errors import GktError
from gkt.engine.distributed import DistContext
from gkt.engine.tracking import Trackers
from gkt.reporting.findings import number, transfer_findings
from gkt.reporting.tables import format_table

# Options a resumed run takes from the interrupted run (everything but --epochs).
RESUMED = ("student", "teacher", "method", "data", "fraction", "lr", "batch_size", "temperature", "method_arg",
           "weight_decay", "augment", "unlabelled", "student_mode", "seed", "img_size", "bad_images", "recipe",
           "augment_epochs")


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.core.runtime import PRECISIONS
    from gkt.data.augment import augment_help
    from gkt.data.spec import SYNTAX
    from gkt.engine.loop import Runtime
    from gkt.models.specs import source_prefixes
    from gkt.transfer import TRANSFER_FRACTION, TransferConfig, describe_methods
    from gkt.transfer.multi import ORDERS
    from gkt.transfer.recipes import RECIPES, describe_recipes

    d, rt = TransferConfig(), Runtime()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "methods:\n" + describe_methods()
    p.add_argument("--student", help=f"model spec of the pretrained student ({source_prefixes()}; see gkt --help)")
    p.add_argument("--teacher", action="append", metavar="SPEC",
                   help=f"model spec of the teacher ({source_prefixes()}; see gkt --help); repeat it for "
                        "multi-teacher transfer")
    p.add_argument("--class-map", metavar="FILE",
                   help="JSON/YAML {data_class: model_class_or_list} aligning the student's and the teachers' classes "
                        "to the data's (mapped logit = logsumexp of the model's classes); without it, classes are "
                        "matched by name (ImageNet models also across WordNet ids and class names)")
    add_config_option(p, "--method", d, help="transfer method (listed below)")
    p.add_argument("--method-arg", action="append", default=[], metavar="K=V",
                   help="method hyperparameter, repeatable (e.g. --method-arg lam=0.7)")
    p.add_argument("--data", default="fmnist", help=f"data spec {SYNTAX} (default: fmnist)")
    p.add_argument("--fraction", type=float, default=TRANSFER_FRACTION,
                   help=f"stratified share of the train split used as transfer set (default: {TRANSFER_FRACTION})")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs over the transfer set (default: {d.epochs}; with --resume: the run's)")
    add_config_option(p, "--recipe", d, choices=list(RECIPES),
                      help=f"defaults for --lr and --augment where not given ({describe_recipes()})")
    add_config_option(p, "--lr", TransferConfig, type=float, help="SGD learning rate (default: the recipe's)")
    add_config_option(p, "--batch-size", d, help="batch size")
    add_config_option(p, "--temperature", d, help="softmax temperature T")
    add_config_option(p, "--weight-decay", d, help="SGD weight decay")
    add_config_option(p, "--augment", TransferConfig, metavar="NAME", nargs="*", type=str,
                      help=f"{augment_help()} (default: the recipe's; none given: no augmentation)")
    add_config_option(p, "--augment-epochs", d, metavar="N",
                      help="with --augment photo: N epochs of crops, epoch e reusing those of e mod N, so the frozen "
                           "models' stored outputs cover N passes (0: new crops every epoch)")
    p.add_argument("--unlabelled", action="store_true",
                   help="treat the transfer set as unlabelled: only label-free methods are allowed")
    add_config_option(p, "--student-mode", d, choices=["train", "eval"],
                      help="train: the student's dropout and BatchNorm statistics work as in ordinary fine-tuning; "
                           "eval: both frozen, so only the loss changes the student")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted transfer run from its last finished epoch (into a new run "
                        "directory; --epochs may extend it, other options come from the run)")
    speed = p.add_argument_group("speed (how it runs, not what it computes; under torchrun every rank trains "
                                 "1/N of each --batch-size batch)")
    speed.add_argument("--no-cache", action="store_true",
                       help="compute the frozen models' outputs every step even without augmentation (default: "
                            "computed once, stored in $GKT_HOME/predictions and reused)")
    add_config_option(speed, "--precision", rt, choices=["auto", *PRECISIONS],
                      help="autocast precision (auto: bf16 on a GPU that supports it, else fp32)")
    speed.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster CNNs on GPUs)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the student's training forward")
    add_config_option(speed, "--loader-workers", rt, type=int,
                      help="DataLoader processes decoding image batches (folders, hf: data; none given: one per CPU "
                           "but one, 1 to 8; 0: in the main process)")
    multi = p.add_argument_group("multi-teacher transfer (several --teacher)")
    multi.add_argument("--multi", nargs="+", metavar="MODE",
                       help="sequential (one teacher after another), parallel (all at once, K-teacher data "
                            "partition), soup (weight average of the single-teacher students), or all; the "
                            "single-teacher runs always run too (cached), and a Table-4-style summary is written")
    multi.add_argument("--order", default="given", choices=list(ORDERS),
                       help="sequential teacher order: as given, or by test accuracy ascending/descending")
    multi.add_argument("--seeds", type=int, nargs="+", metavar="N",
                       help="repeat the multi-teacher study over these seeds (default: --seed); the summary "
                            "gives mean ± std")
    add_tracking_options(p)


def _augment(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--augment`` as given (None: left to the recipe)."""
    return None if args.augment is None else tuple(args.augment)


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else number(100 * value)


@register_verb("transfer", "transfer knowledge from a teacher into a pretrained student", _configure,
               resumed=(*RESUMED, "class_map"))
def transfer(args: argparse.Namespace) -> int:
    from gkt.experiments.transfer_run import parse_method_arg
    from gkt.transfer import TransferConfig, create_method

    create_method(args.method)  # unknown names fail before anything is loaded
    if args.resume and args.multi:
        raise GktError("--resume continues a single-teacher run; rerun a multi-teacher command to continue it "
                       "(its finished transfer runs are reused from the cache)")
    teachers = args.teacher or []
    if args.student is None or not teachers:
        raise GktError("give --student SPEC and --teacher SPEC (or --resume RUN_DIR)")
    config = TransferConfig(method=args.method, method_args=parse_method_arg(args.method_arg),
                            epochs=args.epochs or TransferConfig.epochs, lr=args.lr, weight_decay=args.weight_decay,
                            batch_size=args.batch_size, temperature=args.temperature, augment=_augment(args),
                            augment_epochs=args.augment_epochs, seed=args.seed, unlabelled=args.unlabelled,
                            student_mode=args.student_mode, recipe=args.recipe)
    config.build_method()  # bad method arguments / labels on unlabelled data fail early
    dist = getattr(args, "dist", DistContext())
    if args.multi or len(teachers) > 1:
        if dist.enabled:
            raise GktError("multi-teacher transfer runs in one process; start it without torchrun")
        with tracking(args, resolved_config(args)) as tracker:
            return _multi_transfer(args, config, teachers, tracker)
    (spec,) = teachers
    from gkt.experiments.transfer_run import transfer as run_one

    with tracking(args, resolved_config(args)) if dist.is_main else contextlib.nullcontext() as tracker:
        outcome = run_one(
            args.student, spec, data=args.data, method=args.method, method_arg=config.method_args,
            fraction=args.fraction, epochs=config.epochs, lr=args.lr, batch_size=args.batch_size,
            temperature=args.temperature, weight_decay=args.weight_decay, augment=_augment(args), recipe=args.recipe,
            augment_epochs=args.augment_epochs, unlabelled=args.unlabelled, student_mode=args.student_mode,
            class_map=args.class_map, seed=args.seed, data_dir=args.data_dir, zoo_dir=args.zoo_dir,
            device=args.torch_device, threads=args.threads, precision=args.precision,
            no_cache=args.no_cache, channels_last=args.channels_last, compile=args.compile,
            loader_workers=args.loader_workers, bad_images=args.bad_images, img_size=args.img_size,
            run_dir=args.run_dir, resume=args.resume,
            on_epoch=tracker.log_epoch if tracker is not None else None, dist=dist)
        if tracker is None:
            return 0
        tracker.log_metrics({f"final/{k}": v for k, v in outcome.final.items() if k != "config"}, config.epochs)
    columns = ["epoch", "train_loss", "acc", "delta_transf", "knowledge_gain", "knowledge_loss", "delta_rho_pos",
               "delta_rho_neg"]
    print(format_table([{c: (row.get(c, "-") if c in ("epoch", "train_loss") else _fmt(row[c])) for c in columns}
                        for row in outcome.history]))
    final = outcome.final
    print("\n" + "\n".join(transfer_findings(final)))
    print(f"transferred student: {final['checkpoint']}\nrun directory: {args.run_dir}")
    return 0


def _multi_transfer(args: argparse.Namespace, config: Any, specs: list[str], tracker: Trackers) -> int:
    """Single-teacher runs plus the requested multi-teacher modes for each seed, then the summary
    (:func:`gkt.experiments.multi_run.multi_transfer`); each run's final metrics go to ``tracker``."""
    from gkt.experiments.multi_run import multi_transfer
    from gkt.reporting.multi_teacher import summary_table

    outcome = multi_transfer(args.student, specs, multi=args.multi or (), config=config, data=args.data,
                             fraction=args.fraction, seeds=args.seeds, order=args.order, class_map=args.class_map,
                             data_dir=args.data_dir, zoo_dir=args.zoo_dir, device=args.device, threads=args.threads,
                             bad_images=args.bad_images, img_size=args.img_size, run_dir=args.run_dir,
                             on_job=tracker.log_job)
    for seed, (singles, results) in outcome.seeds.items():
        print(f"\n== seed {seed}: student {_fmt(outcome.acc_student)}%; single-teacher transfer (points on the test "
              "split)")
        print(format_table([{"teacher": r["teacher"], "acc_teacher": _fmt(r["acc_teacher"]), "acc": _fmt(r["acc"]),
                             "delta_transf": _signed(r["delta_transf"]), "gain": _fmt(r["knowledge_gain"]),
                             "loss": _fmt(r["knowledge_loss"])} for r in singles]))
        for mode, result in results.items():
            m = result.metrics
            print(f"\n{mode}: acc {_fmt(m['acc'])}%  Δtransf {_signed(m['delta_transf'])}  gain "
                  f"{_fmt(m['knowledge_gain'])}  loss {_fmt(m['knowledge_loss'])}")
            if mode == "sequential":
                print(format_table([{"step": s["step"], "teacher": s["teacher"], "acc": _fmt(s["acc"]),
                                     "delta_transf": _signed(s["delta_transf"]), "gain": _fmt(s["knowledge_gain"]),
                                     "loss": _fmt(s["knowledge_loss"]), "delta_prev": _signed(s["delta_prev"]),
                                     "gain_prev": _fmt(s["gain_prev"]), "loss_prev": _fmt(s["loss_prev"])}
                                    for s in result.steps]))
            if mode == "parallel":
                size = result.details["transfer_set_size"]
                print("samples assigned on the transfer set: " + ", ".join(
                    f"{name} {n} ({100 * n / size:.1f}%)" for name, n in result.details["assigned"].items()))
    print("\nΔtransf in points, mean ± std over seeds (single: over the teachers, each alone)")
    print(summary_table([outcome.summary]))
    print(f"\nrun directory: {args.run_dir} (summary.md/csv/json; seedN/<mode>/final.json; transfer runs cached "
          "under $GKT_HOME/transfer-runs)")
    return 0


def _signed(value: float) -> str:
    return number(100 * value, signed=True)
