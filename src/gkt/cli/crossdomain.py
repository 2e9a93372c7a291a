"""``gkt crossdomain``: teachers fine-tuned on a shifted domain transfer into original-domain students
(paper appendix B.5, Fig. 10)."""

from __future__ import annotations

import argparse
import time

from gkt.cli import register_verb
from gkt.cli.adapt import add_transfer_options, print_study, store_path, study_plan
from gkt.cli.config import add_config_option
from gkt.core.errors import GktError
from gkt.reporting.tables import format_table


def _configure(p: argparse.ArgumentParser) -> None:
    from gkt.adapt.domains import DomainFinetune
    from gkt.data.domains import describe_domains
    from gkt.models.specs import source_prefixes
    from gkt.transfer import TRANSFER_FRACTION

    d = DomainFinetune()

    p.description = f"{p.description}\n\ndomains:\n{describe_domains()}"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--domain", required=True, help="the teachers' shifted domain (listed above)")
    p.add_argument("--teachers", nargs="+", required=True,
                   help=f"model specs ({source_prefixes()}; see gkt --help) fine-tuned on the domain, then teachers")
    p.add_argument("--students", nargs="+", required=True,
                   help=f"original-domain students (model specs: {source_prefixes()}; see gkt --help)")
    p.add_argument("--data", default="fmnist", help="original data spec (default: fmnist)")
    add_config_option(p, "--ft-epochs", d.recipe, "epochs", help="domain fine-tuning epochs")
    add_config_option(p, "--ft-lr", d.recipe, "lr", help=f"domain fine-tuning peak lr, {d.recipe.optimizer}")
    add_config_option(p, "--ft-batch-size", d.recipe, "batch_size", help="domain fine-tuning batch size")
    add_config_option(p, "--ft-fraction", d, "fraction",
                      help="stratified share of the shifted train split to fine-tune on")
    add_transfer_options(p, epochs=None, fraction=TRANSFER_FRACTION)


@register_verb("crossdomain", "fine-tune teachers on a shifted domain, transfer them into original-domain students",
               _configure)
def crossdomain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gkt.adapt.domains import DomainFinetune, domain_teacher
    from gkt.core.io import write_csv
    from gkt.data.domains import DOMAINS
    from gkt.experiments.adapt_study import transfer_study

    DOMAINS.check(args.domain)
    if len(set(args.teachers)) != len(args.teachers):
        raise GktError("--teachers lists a model twice")
    cfg = DomainFinetune()
    cfg = replace(cfg, fraction=args.ft_fraction,
                  recipe=replace(cfg.recipe, epochs=args.ft_epochs, lr=args.ft_lr, batch_size=args.ft_batch_size))
    from gkt.data.spec import DataSpec

    original = DataSpec.parse(args.data)
    if original.domain is not None:
        raise GktError(f"--data {args.data}: give the original data, without @{original.domain}; the teachers' shifted "
                       "domain is --domain")
    shifted = str(replace(original, domain=args.domain))
    rows, labels = [], {}
    for spec in args.teachers:
        teacher, record = domain_teacher(spec, shifted, cfg, args.torch_device, args.data_dir, args.zoo_dir)
        labels[teacher] = f"{spec}@{args.domain}"
        rows.append({"teacher": labels[teacher], "source": spec,
                     **{k: round(100 * record[k], 2) for k in ("acc_orig_before", "acc_orig_after",
                                                               "acc_domain_before", "acc_domain_after")},
                     "train_seconds": record["train_seconds"], "cached": record["cached"], "checkpoint": teacher})
    write_csv(args.run_dir / "domain_teachers.csv", rows)
    print(f"teachers fine-tuned on {shifted}; test accuracy in % on the original and the shifted domain:")
    print(format_table(rows, ["teacher", "acc_orig_before", "acc_orig_after", "acc_domain_before",
                              "acc_domain_after", "train_seconds", "cached"]))
    start = time.perf_counter()
    store = store_path(args)
    result = transfer_study(study_plan(args, list(args.students), list(labels), args.data), args.run_dir, labels,
                            args.workers, args.threads, figure="fig10_crossdomain_delta_transf_vs_delta_acc.png",
                            title=f"Teachers fine-tuned on {shifted} -> {args.data} students", store_path=store,
                            retry_failed=args.retry_failed)
    code = print_study(result, store or args.run_dir / "results.sqlite", time.perf_counter() - start)
    print(f"run directory: {args.run_dir}")
    return code
