"""``gkt study``: a grid of transfers over many pairs, one results store, the paper's figures."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gkt.cli import register_verb
from gkt.cli.config import GIVEN, add_config_option, resolved_config
from gkt.cli.tracking import add_tracking_options, tracking
from gkt.core.config import GRID_KEYS
from gkt.core.errors import GktError
from gkt.core.io import read_json, write_json
from gkt.experiments.grid import STORE_NAME
from gkt.reporting.study import write_study_outputs
from gkt.reporting.tables import format_table

if TYPE_CHECKING:
    from gkt.experiments.grid import LocalBackend, RayBackend, ResultsStore, StudyCounts


def _values(text: str) -> list[Any]:
    out = []
    for item in text.split(","):
        try:
            out.append(json.loads(item))
        except json.JSONDecodeError:
            out.append(item)
    return out


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.core.runtime import PRECISIONS
    from gkt.data.spec import SYNTAX as DATA_SYNTAX
    from gkt.models.specs import source_prefixes
    from gkt.transfer.trainer import TRANSFER_FRACTION, Runtime

    p.add_argument("--students", nargs="+", help=f"student model specs ({source_prefixes()}; see gkt --help); "
                                                 "'zoo' = every built zoo model")
    p.add_argument("--teachers", nargs="+",
                   help=f"teacher model specs ({source_prefixes()}; default: the students; all ordered pairs)")
    p.add_argument("--methods", nargs="+", default=["kl", "kl-dp"], help="transfer methods (default: kl kl-dp)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    p.add_argument("--epochs", type=int, default=None, help="transfer epochs (default: the transfer default)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the transfer default)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="extra grid axis over a job setting (lr, epochs, temperature, batch_size, student_mode), "
                        "repeatable")
    p.add_argument("--method-arg", action="append", default=[], metavar="METHOD:K=V",
                   help="a method hyperparameter (e.g. xekl-mcl:tau=0.99), repeatable")
    p.add_argument("--data", default="fmnist", help=f"data spec {DATA_SYNTAX} (default: fmnist)")
    p.add_argument("--fraction", type=float, default=TRANSFER_FRACTION, help="stratified share of train as transfer set")
    p.add_argument("--class-map", metavar="FILE", help="JSON/YAML {data_class: model_class_or_list} aligning every "
                   "student and teacher to the data's classes (default: match class names)")
    p.add_argument("--batch-size", type=int, default=None, help="transfer batch size (default: the transfer default)")
    add_config_option(p, "--precision", Runtime(), choices=["auto", *PRECISIONS],
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


def parse_method_args(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, str]]:
    parsed: dict[str, dict[str, str]] = {m: {} for m in methods}
    for item in items:
        method, sep, kv = item.partition(":")
        key, sep2, value = kv.partition("=")
        if not (sep and sep2) or method not in parsed:
            raise GktError(f"--method-arg expects METHOD:K=V with METHOD among {list(methods)}, got {item!r}")
        parsed[method][key.replace("-", "_")] = value
    return parsed


def _expand_zoo(specs: Sequence[str], zoo_dir: str | None) -> list[str]:
    from gkt.experiments.zoo import list_zoo

    out = []
    for spec in specs:
        out += [f"zoo:{r.name}" for r in list_zoo(zoo_dir)] if spec == "zoo" else [spec]
    return out


def study_jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    from gkt.experiments.grid import expand_grid
    from gkt.experiments.transfer_job import check_settings

    students = _expand_zoo(args.students or [], args.zoo_dir)
    teachers = _expand_zoo(args.teachers, args.zoo_dir) if args.teachers else students
    if not students or not teachers:
        raise GktError("a study needs --students (and optionally --teachers)")
    method_args = parse_method_args(args.method_arg, args.methods)
    base = {"data": args.data, "fraction": args.fraction, "data_dir": args.data_dir, "zoo_dir": args.zoo_dir}
    base |= {k: getattr(args, k) for k in ("epochs", "lr", "batch_size") if getattr(args, k) is not None}
    base |= {k: getattr(args, k) for k, default in (("device", "auto"), ("precision", "fp32"))
             if getattr(args, k) != default}
    if args.class_map:  # its contents, so the jobs' keys follow the map, not its path
        from gkt.models.class_map import read_class_map

        base["class_map"] = read_class_map(args.class_map)
    axes: dict[str, list[Any]] = {"student": students, "teacher": teachers, "method": list(args.methods),
                                  "seed": list(args.seeds)}
    for item in args.grid:
        key, sep, values = item.partition("=")
        if not sep or key not in GRID_KEYS:
            raise GktError(f"--grid expects KEY=V1,V2 with KEY in {', '.join(GRID_KEYS)}; got {item!r}")
        axes[key] = _values(values)
    check_settings({**{k: [v] for k, v in base.items() if k in GRID_KEYS}, **{k: v for k, v in axes.items()
                                                                             if k in GRID_KEYS}})
    jobs = expand_grid(base, axes, skip=lambda j: j["student"] == j["teacher"])
    for job in jobs:
        job["method_args"] = method_args[job["method"]]
    return jobs


def study_backend(args: argparse.Namespace) -> LocalBackend | RayBackend:
    """The backend of ``--backend``: on CUDA, local workers spread over the visible GPUs (one each) and
    Ray tasks ask for GPUs. A device with an index (``cuda:1``) keeps every worker on that device."""
    from gkt.experiments.grid import RayBackend, local_backend

    if args.backend == "ray":
        return RayBackend(args.ray_address, threads=args.threads or 1, device_type=args.torch_device.type,
                          num_gpus_per_job=args.ray_gpus_per_job)
    return local_backend(args.workers, args.threads, args.torch_device)


def print_failures(store: ResultsStore, counts: StudyCounts) -> None:
    """One line per failed job: the pair, the method and the error."""
    from gkt.experiments.grid import failed_rows

    for row in failed_rows(store, counts.failed + counts.not_retried):
        c = row.config
        print(f"  failed: {c.get('teacher')} -> {c.get('student')} {c.get('method')} seed {c.get('seed')}: "
              f"{row.metrics.get('error', '?')}")


# What a study's options decide about its jobs: with --resume, the study's own jobs run, so these are refused.
JOB_OPTIONS = ("students", "teachers", "methods", "seeds", "epochs", "lr", "grid", "method_arg", "data", "fraction",
               "class_map", "batch_size", "precision", "data_dir")
STORE_POINTER = "store.json"  # in a resumed study's run directory: where its results store is


# What every job of a study's jobs.json holds (study_jobs writes them), with its type.
JOB_KEYS: dict[str, type | tuple[type, ...]] = {"student": str, "teacher": str, "method": str, "seed": int,
                                                "data": str}


def resumed_study(old: Path, args: argparse.Namespace) -> tuple[list[dict[str, Any]], Path]:
    """The jobs and results store of the study in ``old`` (a study's run directory, or one that resumed it);
    options that would change the jobs are refused (the study's own jobs are what a resume runs)."""
    given = [f"--{key.replace('_', '-')}" for key in JOB_OPTIONS if key in getattr(args, GIVEN, ())]
    if given:
        raise GktError(f"--resume {old} runs that study's own jobs, but you gave {', '.join(given)}; drop them, or "
                       "start a new study for other jobs")
    try:
        pointer = old / STORE_POINTER
        store_path = Path(read_json(pointer)["store"]) if pointer.is_file() else old / STORE_NAME
        jobs = read_json(old / "jobs.json") if (old / "jobs.json").is_file() else None
    except (ValueError, KeyError, TypeError) as exc:
        raise GktError(f"{old}: its jobs.json or {STORE_POINTER} is damaged ({type(exc).__name__}); start a new "
                       "study instead of --resume") from None
    if jobs is None or not store_path.is_file():
        raise GktError(f"{old}: no {STORE_NAME} and jobs.json to resume (is it a study's run directory?)")
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise GktError(f"{old}: its jobs.json is damaged (not a list of jobs); start a new study instead of --resume")
    for i, job in enumerate(jobs):
        wrong = [key for key, kind in JOB_KEYS.items() if not isinstance(job.get(key), kind)
                 or isinstance(job.get(key), bool)]
        if wrong:
            raise GktError(f"{old / 'jobs.json'}: job {i + 1} of {len(jobs)} lacks a valid "
                           f"{', '.join(wrong)}; the file is damaged: restore it, or start a new study "
                           "instead of --resume")
    return jobs, store_path


def check_resume(args: argparse.Namespace) -> None:
    """``--resume RUN_DIR`` can continue that study (checked before anything is written there)."""
    resumed_study(Path(args.resume), args)


@register_verb("study", "run a grid of transfers (students x teachers x methods x seeds x settings)", _configure,
               reopens=check_resume)
def study(args: argparse.Namespace) -> int:
    from gkt.engine.loop import Runtime
    from gkt.experiments.grid import ResultsStore, failed_rows, job_key, run_study
    from gkt.experiments.transfer_job import data_identity, model_identities, transfer_job

    if args.retry_failed and not args.resume:
        raise GktError("--retry-failed reruns the failed jobs of a study: give it with --resume RUN_DIR")
    Runtime(precision=args.precision).autocast_dtype(args.torch_device)  # e.g. fp16 on a CPU: refused here
    if args.resume:
        old = Path(args.resume)
        jobs, store_path = resumed_study(old, args)
    else:
        jobs = study_jobs(args)
        store_path = args.run_dir / STORE_NAME
    data, models = data_identity(jobs), model_identities(jobs)
    if args.resume and (old / "data.json").is_file() and read_json(old / "data.json") != data:
        raise GktError(f"{old}: the data changed since this study ran ({', '.join(data)}): its finished jobs "
                       "describe the old data; start a new study instead of --resume")
    if args.resume and (old / "models.json").is_file():
        before = read_json(old / "models.json")
        changed = [spec for spec, identity in models.items() if before.get(spec, identity) != identity]
        if changed:
            raise GktError(f"{old}: {', '.join(changed)} name other models than when this study ran (other "
                           "weights, preprocessing or classes): its finished jobs describe the old ones; start a "
                           "new study instead of --resume")
    store = ResultsStore(store_path)
    backend = study_backend(args)
    write_json(args.run_dir / "jobs.json", jobs)
    write_json(args.run_dir / "data.json", data)
    write_json(args.run_dir / "models.json", models)
    if store_path.parent != args.run_dir:  # a resumed study keeps its store where it is: say where
        write_json(args.run_dir / STORE_POINTER, {"store": str(store_path.resolve())})
    start = time.perf_counter()
    with tracking(args, resolved_config(args)) as tracker:
        def track_job(config: dict[str, Any], metrics: dict[str, Any], status: str) -> None:
            if status == "done":
                tracker.log_job(job_key(config), config, metrics)

        counts = run_study(transfer_job, jobs, store, backend, retry_failed=args.retry_failed, on_result=track_job)
        tracker.log_metrics({f"jobs_{k}": v for k, v in counts.as_dict().items()}, 0)
    records = store.records(keys={job_key(j) for j in jobs})
    print(f"{counts.describe()} ({time.perf_counter() - start:.0f}s); results store: {store_path}")
    print_failures(store, counts)
    if records:
        print(format_table(write_study_outputs(args.run_dir, records)))
    print(f"run directory: {args.run_dir}")
    if counts.ok:
        return 0
    errors = [row.metrics.get("error", "") for row in failed_rows(store, counts.failed + counts.not_retried)]
    if errors and all(e.startswith(f"{GktError.__name__}:") for e in errors):  # the inputs, not gkt
        raise GktError(f"{len(errors)} of {counts.total} jobs failed on their inputs (first: "
                       f"{errors[0].removeprefix(f'{GktError.__name__}: ')}); fix that, then rerun them with "
                       f"gkt study --resume {args.run_dir} --retry-failed")
    return 1
