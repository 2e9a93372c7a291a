"""Command-line options that open experiment trackers."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gkt.engine.tracking import TRACKERS, Trackers, TrackingContext, open_trackers


@contextmanager
def tracking(args: argparse.Namespace, params: dict[str, Any]) -> Iterator[Trackers]:
    """The trackers chosen by ``args.track`` for ``args.run_dir``, with ``params`` logged; closed as
    FINISHED, or FAILED when the block raises."""
    context = TrackingContext(Path(args.run_dir), args.command.replace(" ", "-"), args.mlflow_uri)
    trackers = Trackers(open_trackers(args.track, context))
    trackers.log_params(params)
    status = "FAILED"
    try:
        yield trackers
        status = "FINISHED"
    finally:
        for tracker in trackers.trackers:
            tracker.close(status)


def add_tracking_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("experiment tracking (the 'track' extra; CSV files are always written)")
    group.add_argument("--track", nargs="+", choices=sorted(TRACKERS), default=[], metavar="BACKEND",
                       help=f"log params and metrics to: {', '.join(sorted(TRACKERS))}")
    group.add_argument("--mlflow-uri", default=None,
                       help="MLflow tracking store (e.g. sqlite:///runs/mlflow.db; default file:RUN_DIR/mlruns)")
