"""``gkt study``: a grid of transfers over many pairs, one results store, the paper's figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gkt.cli import register_verb
from gkt.cli.config import GIVEN, add_config_option, resolved_config
from gkt.cli.tracking import add_tracking_options, tracking
from gkt.core.errors import GktError
from gkt.reporting.tables import format_table

if TYPE_CHECKING:
    from gkt.experiments.grid import LocalBackend, RayBackend, ResultsStore, StudyCounts


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.core.runtime import PRECISIONS
    from gkt.data.augment import augment_help
    from gkt.data.spec import SYNTAX as DATA_SYNTAX
    from gkt.experiments.study import StudyConfig
    from gkt.models.specs import source_prefixes
    from gkt.transfer.recipes import RECIPES, describe_recipes

    d = StudyConfig()
    p.add_argument("--students", nargs="+", help=f"student model specs ({source_prefixes()}; see gkt --help); "
                                                 "'zoo' = every built zoo model")
    p.add_argument("--teachers", nargs="+",
                   help=f"teacher model specs ({source_prefixes()}; default: the students; all ordered pairs)")
    p.add_argument("--methods", nargs="+", default=list(d.methods),
                   help=f"transfer methods (default: {' '.join(d.methods)})")
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds),
                   help=f"seeds (default: {' '.join(map(str, d.seeds))})")
    p.add_argument("--epochs", type=int, default=None, help="transfer epochs (default: the transfer default)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    add_config_option(p, "--recipe", d, choices=list(RECIPES),
                      help=f"the transfer recipe of every job: defaults for lr and augmentation ({describe_recipes()}); "
                           "--grid recipe=gkt,paper runs both")
    p.add_argument("--augment", nargs="*", metavar="NAME", default=None,
                   help=f"{augment_help()} (every job; default: the recipe's; none given: no augmentation)")
    p.add_argument("--augment-epochs", type=int, default=d.augment_epochs, metavar="N",
                   help="with --augment photo: N sets of crops reused cyclically (0: new crops every epoch)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="extra grid axis over a job setting (lr, epochs, temperature, batch_size, student_mode, "
                        "recipe), repeatable")
    p.add_argument("--method-arg", action="append", default=[], metavar="METHOD:K=V",
                   help="a method hyperparameter (e.g. xekl-mcl:tau=0.99), repeatable")
    p.add_argument("--data", default=d.data, help=f"data spec {DATA_SYNTAX} (default: {d.data})")
    p.add_argument("--fraction", type=float, default=d.fraction, help="stratified share of train as transfer set")
    p.add_argument("--class-map", metavar="FILE", help="JSON/YAML {data_class: model_class_or_list} aligning every "
                   "student and teacher to the data's classes (default: match class names)")
    p.add_argument("--batch-size", type=int, default=None, help="transfer batch size (default: the transfer default)")
    add_config_option(p, "--precision", d, choices=["auto", *PRECISIONS],
                      help="autocast precision of every job (auto: bf16 on a GPU that supports it)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the transfers run: local processes (--workers) or a Ray cluster (--ray-address; "
                        "extra ray) (default: local)")
    p.add_argument("--workers", type=int, default=1,
                   help="local backend: parallel processes (default: 1); on CUDA, spread over the visible GPUs")
    p.add_argument("--ray-address", default=None, help="ray backend: cluster address (default: a local Ray)")
    p.add_argument("--ray-gpus-per-job", type=float, default=1.0,
                   help="ray backend on CUDA: GPUs each job asks for (e.g. 0.5: two jobs per GPU; default 1)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a study in its own run directory RUN_DIR (its results store, tables and report; "
                        "no new run directory)")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run the jobs that failed before again (default: report them as failed)")
    add_tracking_options(p)


def study_backend(args: argparse.Namespace) -> LocalBackend | RayBackend:
    """The backend of ``--backend`` (:func:`gkt.experiments.study.make_backend`)."""
    from gkt.experiments.study import make_backend

    return make_backend(args.backend, args.workers, args.threads, args.torch_device, args.ray_address,
                        args.ray_gpus_per_job)


def print_failures(store: ResultsStore, counts: StudyCounts) -> None:
    """One line per failed job: the pair, the method and the error."""
    from gkt.experiments.grid import failed_rows

    for row in failed_rows(store, counts.failed + counts.not_retried):
        c = row.config
        print(f"  failed: {c.get('teacher')} -> {c.get('student')} {c.get('method')} seed {c.get('seed')}: "
              f"{row.metrics.get('error', '?')}")


def check_resume(args: argparse.Namespace) -> None:
    """``--resume RUN_DIR`` can continue that study (checked before anything is written there)."""
    from gkt.experiments.study import JOB_OPTIONS, resumed_study

    given = set(getattr(args, GIVEN, ()))
    resumed_study(Path(args.resume), [k for k in JOB_OPTIONS if k in given])


@register_verb("study", "run a grid of transfers (students x teachers x methods x seeds x settings)", _configure,
               reopens=check_resume)
def study(args: argparse.Namespace) -> int:
    from gkt.experiments.grid import job_key
    from gkt.experiments.study import JOB_OPTIONS
    from gkt.experiments.study import study as run_study

    given = set(getattr(args, GIVEN, ()))  # with --resume, the options the user gave are refused, not defaults
    options = {k: getattr(args, k) if not args.resume or k in given else None for k in JOB_OPTIONS}
    with tracking(args, resolved_config(args)) as tracker:
        def track_job(config: dict[str, Any], metrics: dict[str, Any], status: str) -> None:
            if status == "done":
                tracker.log_job(job_key(config), config, metrics)

        result = run_study(**options, backend=args.backend, workers=args.workers, ray_address=args.ray_address,
                           ray_gpus_per_job=args.ray_gpus_per_job, resume=args.resume,
                           retry_failed=args.retry_failed, zoo_dir=args.zoo_dir, device=args.device,
                           threads=args.threads, bad_images=args.bad_images, img_size=args.img_size,
                           run_dir=args.run_dir, on_result=track_job)
        counts = result.counts
        tracker.log_metrics({f"jobs_{k}": v for k, v in counts.as_dict().items()}, 0)
    print(f"{counts.describe()} ({result.seconds:.0f}s); results store: {result.store_path}")
    print_failures(result.store, counts)
    if result.table:
        print(format_table(result.table))
    print(f"run directory: {args.run_dir}")
    if counts.ok:
        return 0
    errors = [row.metrics.get("error", "") for row in result.failed]
    if errors and all(e.startswith(f"{GktError.__name__}:") for e in errors):  # the inputs, not gkt
        raise GktError(f"{len(errors)} of {counts.total} jobs failed on their inputs (first: "
                       f"{errors[0].removeprefix(f'{GktError.__name__}: ')}); fix that, then rerun them with "
                       f"gkt study --resume {args.run_dir} --retry-failed")
    return 1
