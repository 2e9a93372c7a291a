"""``gkt improve``: make my model better with the models I have, certified not worse on held-out data."""

from __future__ import annotations

import argparse

from gkt.cli import register_verb
from gkt.core.errors import GktError

# Options a resumed run takes from the interrupted run (so it searches the same candidates).
RESUMED = ("student", "zoo", "data", "unlabelled", "risk", "budget", "lrs", "longer_epochs", "fraction",
           "max_teachers", "held_out", "selection_share", "val_fraction", "batch_size", "class_map", "precision", "seed",
           "img_size", "bad_images")


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.cli.config import add_config_option
    from gkt.core.runtime import PRECISIONS
    from gkt.data.spec import SYNTAX
    from gkt.experiments.improve import ImproveConfig
    from gkt.models.specs import source_prefixes

    d = ImproveConfig()
    p.add_argument("--student", help=f"the model to improve ({source_prefixes()}; see gkt --help); its own file "
                                     "is never written")
    p.add_argument("--zoo", nargs="+", metavar="SPEC",
                   help=f"the models it may learn from ({source_prefixes()}; 'zoo' = every built zoo model); "
                        "ranked by the knowledge they hold for the student, those no better than a random teacher "
                        "dropped")
    p.add_argument("--data", default=d.data, help=f"data spec {SYNTAX} (default: {d.data})")
    p.add_argument("--unlabelled", action="store_true",
                   help="do not use the transfer set's labels (label-free KL+DP; no cross-entropy control); the "
                        "selection and certification splits cut from the held-out split stay labelled")
    add_config_option(p, "--risk", d, help="the chance of accepting a model that is in truth no better: the "
                                           "certificate's one-sided test level")
    add_config_option(p, "--budget", d, help="candidate transfers at most, over the three search stages")
    add_config_option(p, "--lrs", d, metavar="LR", nargs="+",
                      help="stage 1's learning rates (the default spans 1000x around the transfer default 3e-4)")
    add_config_option(p, "--epochs", d, help="transfer epochs of stages 1 and 2")
    add_config_option(p, "--longer-epochs", d, help="stage 3: the best transfer (and control) trained this long")
    add_config_option(p, "--fraction", d, help="stratified share of the train split used as transfer set")
    add_config_option(p, "--max-teachers", d, help="how many of the top-ranked kept teachers the search tries")
    add_config_option(p, "--held-out", d, choices=["test", "val"],
                      help="the labelled split cut into a selection and a certification split: test (the data's "
                           "held-out split, which no model trained on: a folder's test/ or val/, hf's test or "
                           "validation split) or val (shipped, else carved from train: held out only for models "
                           "that did not train on all of train)")
    add_config_option(p, "--selection-share", d,
                      help="share of the held-out split that selects among candidates; the rest certifies")
    add_config_option(p, "--val-fraction", d, help="--held-out val: share of train carved as val when the data "
                                                   "ships none")
    add_config_option(p, "--batch-size", d, help="transfer batch size")
    p.add_argument("--class-map", metavar="FILE", help="JSON/YAML {data_class: model_class_or_list} aligning the "
                   "student and every zoo model to the data's classes (default: match class names)")
    add_config_option(p, "--precision", d, choices=["auto", *PRECISIONS],
                      help="autocast precision (auto: bf16 on a GPU that supports it)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the candidate transfers run: local processes (--workers) or Ray (default: local)")
    p.add_argument("--workers", type=int, default=1,
                   help="local backend: parallel candidate transfers (default: 1); on CUDA, spread over the GPUs")
    p.add_argument("--ray-address", default=None, help="ray backend: cluster address (default: a local Ray)")
    p.add_argument("--ray-gpus-per-job", type=float, default=1.0, help="ray backend on CUDA: GPUs per candidate")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted improve: its finished candidates are reused, the rest run")


@register_verb("improve", "make a model better with the models you have, certified not worse on held-out data",
               _configure, resumed=RESUMED)
def improve(args: argparse.Namespace) -> int:
    from gkt.cli.study import study_backend
    from gkt.experiments.improve import improve as run_improve
    from gkt.experiments.zoo import expand_zoo
    from gkt.reporting.html import write_report

    if getattr(args, "dist", None) is not None and args.dist.enabled:
        raise GktError("gkt improve runs in one process (its candidates spread over --workers or Ray); start it "
                       "without torchrun")

    if not args.student or not args.zoo:
        raise GktError("give --student SPEC and --zoo SPEC [SPEC ...] (or --resume RUN_DIR)")
    if args.workers < 1:
        raise GktError(f"--workers must be at least 1, got {args.workers}")
    zoo = expand_zoo(args.zoo, args.zoo_dir, "--zoo")
    decision = run_improve(
        args.student, zoo, data=args.data, unlabelled=args.unlabelled, risk=args.risk, budget=args.budget,
        lrs=args.lrs, epochs=args.epochs, longer_epochs=args.longer_epochs, fraction=args.fraction,
        max_teachers=args.max_teachers, held_out=args.held_out, selection_share=args.selection_share, val_fraction=args.val_fraction,
        batch_size=args.batch_size, seed=args.seed, class_map=args.class_map, data_dir=args.data_dir,
        zoo_dir=args.zoo_dir, precision=args.precision, device=args.torch_device, backend=study_backend(args),
        run_dir=args.run_dir, resume=args.resume)
    html, _ = write_report(args.run_dir, f"gkt improve — {args.student}")
    if decision.accepted:
        print(f"improved model: {decision.model}" + (f" (also in {decision.export['format']}'s format: "
                                                      f"{decision.export['path']})" if decision.export and
                                                     decision.export.get("path") else ""))
    print(f"decision: {args.run_dir / 'decision.json'}\nreport: {html}\nrun directory: {args.run_dir}")
    return 0
