"""``gkt mutual``: models that teach each other at once, each result certified like ``gkt improve``'s."""

from __future__ import annotations

import argparse

from gkt.cli import register_verb
from gkt.core.errors import GktError


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.cli.config import add_config_option
    from gkt.core.runtime import PRECISIONS
    from gkt.data.augment import augment_help
    from gkt.data.spec import SYNTAX
    from gkt.experiments.improve import ImproveConfig
    from gkt.models.specs import source_prefixes
    from gkt.transfer.mutual import MUTUAL_RULES, MutualConfig

    d, m = ImproveConfig(), MutualConfig()
    p.add_argument("--models", nargs="+", metavar="SPEC",
                   help=f"two or more models ({source_prefixes()}; see gkt --help) that teach each other; "
                        "their own files are never written")
    p.add_argument("--data", default=d.data, help=f"data spec {SYNTAX} (default: {d.data})")
    p.add_argument("--unlabelled", action="store_true",
                   help="do not use the transfer set's labels: confidence is the maximum probability (the held-out "
                        "split that certifies stays labelled)")
    add_config_option(p, "--rule", m, choices=list(MUTUAL_RULES),
                      help="with 3+ models: learn from the most confident peer (best) or from every peer (each)")
    add_config_option(p, "--ce", m, help="weight of cross-entropy on the labels, per model (0: none)")
    p.add_argument("--no-certify", dest="certify", action="store_false",
                   help="write every result without the certificate (default: each result must be certified not "
                        "worse on the held-out split, else the original is kept)")
    add_config_option(p, "--risk", d, help="the certificate's one-sided test level")
    add_config_option(p, "--epochs", m, help="epochs over the transfer set")
    add_config_option(p, "--lr", m, help="SGD learning rate (every model)")
    add_config_option(p, "--fraction", d, help="stratified share of the train split used as transfer set")
    add_config_option(p, "--batch-size", m, help="batch size")
    add_config_option(p, "--temperature", m, help="softmax temperature T")
    add_config_option(p, "--augment", m, metavar="NAME",
                      help=augment_help())
    add_config_option(p, "--held-out", d, choices=["test", "val"],
                      help="the labelled split that evaluates and certifies: the data's test split, or a val split "
                           "(shipped, else carved from train)")
    add_config_option(p, "--val-fraction", d, help="--held-out val: share of train carved as val when none ships")
    p.add_argument("--class-map", metavar="FILE", help="JSON/YAML {data_class: model_class_or_list} aligning every "
                   "model to the data's classes (default: match class names)")
    add_config_option(p, "--precision", d, choices=["auto", *PRECISIONS], help="autocast precision")


@register_verb("mutual", "models that teach each other at once (Bi-KD), each result certified not worse", _configure)
def mutual(args: argparse.Namespace) -> int:
    from gkt.experiments.mutual import mutual as run_mutual
    from gkt.reporting.html import write_report


    if not args.models:
        raise GktError("give --models SPEC SPEC [SPEC ...]: two or more models that teach each other")
    run_mutual(
        args.models, data=args.data, unlabelled=args.unlabelled, rule=args.rule, ce=args.ce, certify=args.certify,
        risk=args.risk, epochs=args.epochs, lr=args.lr, fraction=args.fraction, batch_size=args.batch_size,
        temperature=args.temperature, augment=args.augment, held_out=args.held_out, val_fraction=args.val_fraction,
        seed=args.seed, class_map=args.class_map, data_dir=args.data_dir, zoo_dir=args.zoo_dir,
        precision=args.precision, device=args.torch_device, run_dir=args.run_dir, dist=args.dist,
        say=print if args.dist.is_main else lambda _: None)
    if not args.dist.is_main:  # another rank of a torchrun job: trained its share, writes nothing
        return 0
    html, _ = write_report(args.run_dir, f"gkt mutual — {', '.join(args.models)}")
    print(f"final: {args.run_dir / 'final.json'}\nreport: {html}\nrun directory: {args.run_dir}")
    return 0
