"""``gkt kdep pretrain|finetune|benchmark``: KDEP feature distillation as efficient pre-training."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from gkt.cli import GROUP_HELP, register_verb
from gkt.cli.config import add_config_option
from gkt.core.config import Recipe
from gkt.core.errors import GktError
from gkt.core.io import atomic_path, write_csv, write_json
from gkt.reporting.tables import format_table

GROUP_HELP["kdep"] = "KDEP: pre-train a new architecture from a teacher's features, fine-tune, benchmark"


def _add_recipe(p: argparse.ArgumentParser, recipe: Recipe) -> None:
    """Options of a training recipe, defaulting to ``recipe`` (the benchmark's)."""
    from gkt.data.augment import augment_help

    add_config_option(p, "--epochs", recipe, help="epochs")
    add_config_option(p, "--lr", recipe, help="peak learning rate, warm-up + cosine")
    add_config_option(p, "--weight-decay", recipe, help="weight decay")
    add_config_option(p, "--optimizer", recipe, choices=("sgd", "adamw"), help="optimizer (SGD with momentum 0.9)")
    add_config_option(p, "--batch-size", recipe, help="batch size")
    add_config_option(p, "--augment", recipe, metavar="AUG", help=augment_help())


def _recipe(args: argparse.Namespace) -> Recipe:
    return Recipe(epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                  batch_size=args.batch_size, augment=tuple(args.augment), seed=args.seed)


def _add_data(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    from gkt.data.spec import SYNTAX

    p.add_argument("--data", default=default, required=default is None,
                   help=f"{what} data spec {SYNTAX}; BASE: fmnist | digits (scikit-learn, 28x28) | folder:PATH | hf:DIR | hf:ORG/NAME")
    p.add_argument("--classes", default=None,
                   help="keep only these classes, relabelled in order (e.g. 0-4, 5,7); the same as DATA[CLASSES]")


def _configure_pretrain(p: argparse.ArgumentParser) -> None:
    from gkt.experiments.kdep_benchmark import BenchmarkConfig
    from gkt.kdep.objectives import OBJECTIVES, ObjectiveConfig
    from gkt.models.specs import source_prefixes

    bench, d = BenchmarkConfig(), ObjectiveConfig()
    p.add_argument("--teacher", default=None, help=f"teacher model spec ({source_prefixes()}; see gkt --help)")
    p.add_argument("--student-arch", default=None,
                   help="student architecture, randomly initialised: zoo-arch:NAME[?k=v&...] | timm:ARCH[?k=v] "
                        "(required unless --resume)")
    _add_data(p, "fmnist", "pre-training")
    add_config_option(p, "--fraction", bench, help="stratified share of the data")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="kdep", help="pre-training loss (default kdep)")
    add_config_option(p, "--loss-w", d, help="KDEP loss weight")
    add_config_option(p, "--pts-temperature", d, help="PTS temperature T")
    add_config_option(p, "--pts-power", d, help="PTS power n")
    add_config_option(p, "--kd-temperature", d, help="logit-KD temperature")
    add_config_option(p, "--teacher-layer", d, help="teacher feature: auto | features | MODULE[:in|:out] of the net")
    add_config_option(p, "--student-layer", d, help="student feature, as --teacher-layer")
    p.add_argument("--output", default=None, help="checkpoint path (default RUN_DIR/student)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted pre-training run from its last finished epoch, with its own options "
                        "(--epochs may extend it); the same final weights as an uninterrupted run")
    _add_recipe(p, bench.pretrain_recipe)


# Options a resumed pre-training run takes from the interrupted run (everything but --epochs and --output).
RESUMED = ("teacher", "student_arch", "data", "classes", "img_size", "fraction", "objective", "loss_w",
           "pts_temperature", "pts_power", "kd_temperature", "teacher_layer", "student_layer", "lr", "weight_decay",
           "optimizer", "batch_size", "augment", "seed", "bad_images")


def check_output(output: str | None) -> None:
    """``--output``, checked before any training: a path the file system can hold, no model there already
    (gkt never overwrites one) and a writable folder."""
    if output is None:
        return
    from gkt.cli.rundir import check_writable
    from gkt.core.limits import check_path
    from gkt.models.checkpoint import checkpoint_paths

    check_path(output, "--output")
    weights, sidecar = checkpoint_paths(output)
    if sidecar.exists():
        raise GktError(f"--output {output}: a model is there already ({sidecar.name}); gkt never overwrites "
                       "one: give another path")
    check_writable(weights.parent, f"--output {output}", "give a path in a writable folder")


@register_verb("kdep pretrain", "pre-train a randomly initialised student on a teacher's SVD-aligned features",
               _configure_pretrain, resumed=RESUMED)
def kdep_pretrain(args: argparse.Namespace) -> int:
    from gkt.data.datasets import DEFAULT_DECODE_SIZE
    from gkt.data.spec import DataSpec, load_split
    from gkt.data.subsets import stratified_subset
    from gkt.kdep.objectives import ObjectiveConfig
    from gkt.kdep.pretrain import build_student, load_pretrain_state, load_teacher, pretrain
    from gkt.models import save_checkpoint

    check_output(args.output)
    resume = load_pretrain_state(args.resume) if args.resume else None  # its options are the run's (register_verb)
    if not args.student_arch:
        raise GktError("give --student-arch ARCH (or --resume RUN_DIR)")
    spec = DataSpec.parse(args.data).with_classes(args.classes)
    # encoded images (folder:, hf:) as they are, RGB, decoded at --img-size (default 224 px)
    images = {"val_fraction": 0.0, "image_size": args.img_size or DEFAULT_DECODE_SIZE, "channels": 3}
    data = stratified_subset(load_split(spec, "train", data_dir=args.data_dir, **images), fraction=args.fraction,
                             seed=args.seed)
    teacher = load_teacher(args.teacher, data) if args.teacher else None
    names = teacher.class_names if args.objective == "logit-kd" and teacher else data.class_names
    student = build_student(args.student_arch, data, names, seed=args.seed)
    cfg = ObjectiveConfig(loss_w=args.loss_w, pts_temperature=args.pts_temperature, pts_power=args.pts_power,
                          kd_temperature=args.kd_temperature, teacher_layer=args.teacher_layer,
                          student_layer=args.student_layer)
    if resume is not None:
        print(f"resuming {args.resume} after epoch {resume['epoch']} of {args.epochs}")
    result = pretrain(student, data, args.objective, _recipe(args), args.torch_device, teacher=teacher, cfg=cfg,
                      run_dir=args.run_dir, resume=resume)
    output = Path(args.output) if args.output else args.run_dir / "student"
    path = save_checkpoint(result.student.cpu(), output)
    metrics = {"objective": args.objective, "data": data.name, "samples": len(data), "losses": result.losses,
               "resumed_from": args.resume,
               "seconds": round(result.seconds, 2), "train_seconds": round(result.train_seconds, 2),
               "checkpoint": str(path), **result.info}
    write_json(args.run_dir / "pretrain.json", metrics)
    print(format_table([{k: v for k, v in metrics.items() if k not in ("losses", "checkpoint")}]))
    print(f"\nloss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} over {len(result.losses)} epochs; "
          f"student: file:{path.with_suffix('')}")
    return 0


def _configure_finetune(p: argparse.ArgumentParser) -> None:
    from gkt.experiments.kdep_benchmark import BenchmarkConfig
    from gkt.models.specs import source_prefixes

    p.add_argument("--model", required=True,
                   help=f"pre-trained model spec ({source_prefixes()}; e.g. file:RUN_DIR/student)")
    _add_data(p, None, "downstream")
    p.add_argument("--per-class", type=int, default=None, help="train on this many samples per class (seeded)")
    p.add_argument("--output", default=None, help="checkpoint path (default RUN_DIR/finetuned)")
    _add_recipe(p, BenchmarkConfig().finetune_recipe)


@register_verb("kdep finetune", "new head + full fine-tuning of a (pre-trained) model on a downstream dataset",
               _configure_finetune)
def kdep_finetune(args: argparse.Namespace) -> int:
    from gkt.data.spec import DataSpec, load_split
    from gkt.data.subsets import stratified_subset
    from gkt.kdep.pretrain import finetune
    from gkt.models import load_model, save_checkpoint
    from gkt.models.preprocess import decode_size_for

    check_output(args.output)
    spec = DataSpec.parse(args.data).with_classes(args.classes)
    model = load_model(args.model, zoo_dir=args.zoo_dir)
    pre = model.preprocess  # encoded images decoded for the model's own input
    images = {"val_fraction": 0.0, "image_size": decode_size_for([pre]), "channels": pre.channels}
    train = load_split(spec, "train", data_dir=args.data_dir, **images)
    if args.per_class is not None:
        train = stratified_subset(train, per_class=args.per_class, seed=args.seed)
    test = load_split(spec, "test", data_dir=args.data_dir, **images)
    model, acc = finetune(model, train, test, _recipe(args), args.torch_device)
    path = save_checkpoint(model.cpu(), Path(args.output) if args.output else args.run_dir / "finetuned")
    write_json(args.run_dir / "finetune.json", {"model": args.model, "train": train.name, "test": test.name,
                                                "train_samples": len(train), "test_samples": len(test),
                                                "test_acc": acc, "checkpoint": str(path)})
    print(f"{args.model} fine-tuned on {len(train)} samples of {train.name}: test accuracy {100 * acc:.2f}% "
          f"on {len(test)} samples; model: file:{path.with_suffix('')}")
    return 0


def _configure_benchmark(p: argparse.ArgumentParser) -> None:
    from gkt.experiments.kdep_benchmark import BenchmarkConfig
    from gkt.models.specs import source_prefixes

    d = BenchmarkConfig()
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (1 seed, 1 epoch, tiny pools)")
    add_config_option(p, "--teacher", d,
                      help=f"teacher model spec ({source_prefixes()}; see gkt --help), or 'split': the zoo ResNet recipe trained on the pre-training classes "
                           "only (cached), so it has never seen downstream classes")
    add_config_option(p, "--student-arch", d, help="student architecture")
    add_config_option(p, "--pretrain-data", d, help="pre-training data spec")
    add_config_option(p, "--pretrain-classes", d, help="pre-training classes")
    add_config_option(p, "--fraction", d, help="share of the pool for the fractional arms")
    add_config_option(p, "--downstream", d, nargs="+",
                      help="downstream tasks, data specs (add folder:PATH; read as the benchmark student's 28 px gray)")
    add_config_option(p, "--seeds", d, nargs="+", help="seeds")
    add_config_option(p, "--pretrain-epochs", d.pretrain_recipe, "epochs", help="pre-training epochs")
    add_config_option(p, "--finetune-epochs", d.finetune_recipe, "epochs", help="fine-tuning epochs")
    add_config_option(p, "--finetune-per-class", d, help="downstream training samples per class")
    add_config_option(p, "--loss-w", d.objective, help="KDEP / linear-align loss weight")


@register_verb("kdep benchmark", "KDEP vs supervised / logit-KD / learned-alignment / no pre-training, "
               "each followed by the same fine-tuning", _configure_benchmark)
def kdep_benchmark(args: argparse.Namespace) -> int:
    from gkt.experiments.grid import STORE_NAME, ResultsStore
    from gkt.experiments.kdep_benchmark import BenchmarkConfig, run_benchmark
    from gkt.reporting.kdep import plot_benchmark

    d = BenchmarkConfig()
    cfg = BenchmarkConfig(teacher=args.teacher, student_arch=args.student_arch, pretrain_data=args.pretrain_data,
                          pretrain_classes=args.pretrain_classes, fraction=args.fraction,
                          downstream=tuple(args.downstream), seeds=tuple(args.seeds),
                          pretrain_recipe=replace(d.pretrain_recipe, epochs=args.pretrain_epochs),
                          finetune_recipe=replace(d.finetune_recipe, epochs=args.finetune_epochs),
                          finetune_per_class=args.finetune_per_class,
                          objective=replace(d.objective, loss_w=args.loss_w))
    cfg = cfg.quick() if args.quick else cfg
    write_json(args.run_dir / "benchmark_config.json", cfg.to_dict())
    start = time.perf_counter()
    result = run_benchmark(cfg, args.torch_device, data_dir=args.data_dir, progress=print,
                           store=ResultsStore(args.run_dir / STORE_NAME))
    write_csv(args.run_dir / "results.csv", result.rows)
    write_json(args.run_dir / "results.json", {"config": cfg.to_dict(), "teacher": result.teacher,
                                               "rows": result.rows, "summary": result.summary})
    columns = ["method", "pretrain_samples", "pretrain_s", *cfg.downstream, "mean"]
    table = format_table(result.summary, columns)
    with atomic_path(args.run_dir / "table.md") as tmp:
        tmp.write_text(format_table(result.summary, columns, markdown=True) + "\n")
    title = (f"{cfg.student_arch} pre-trained on {cfg.pretrain_data}[{cfg.pretrain_classes}], "
             f"{len(cfg.seeds)} seed(s); downstream: {', '.join(cfg.downstream)}")
    plot_benchmark(result.summary, args.run_dir / "accuracy_vs_time.png", title)
    teacher = result.teacher
    print(f"\nteacher: {teacher.get('spec', '-')}"
          + (f", test acc {100 * teacher['test_acc']:.2f}%" if teacher.get("test_acc") is not None else "")
          + (f", trained in {teacher['train_seconds']}s (once, cached)" if teacher.get("train_seconds") else ""))
    print(f"downstream accuracy (%, mean ± std over seeds {list(cfg.seeds)}) and pre-training wall time "
          f"(s, incl. teacher passes and SVD):\n{table}")
    print(f"\nbenchmark finished in {time.perf_counter() - start:.0f}s; table, CSV and plot in {args.run_dir}")
    return 0
