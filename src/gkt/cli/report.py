"""``gkt report RUN_DIR``: a self-contained HTML page and a Markdown file for a run directory."""

from __future__ import annotations

import argparse

from gkt.cli import register_verb


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a gkt run directory (analyze, study, transfer, zoo, kdep ...)")


@register_verb("report", "write report.html and report.md for a run directory", _configure)
def report(args: argparse.Namespace) -> int:
    from gkt.reporting.html import check_run_dir, run_status, write_report

    check_run_dir(args.run)  # a directory a gkt command wrote: never a data folder or the current directory
    html_path, md_path = write_report(args.run)
    status = run_status(args.run)
    if status not in (None, "ok"):
        print(f"note: {args.run} is not complete (status: {status}); the report says its results are partial")
    print(f"report: {html_path}\nmarkdown: {md_path}")
    return 0
