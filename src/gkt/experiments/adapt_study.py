"""Transfer studies between adapted or domain-shifted models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gkt.core.errors import GktError
from gkt.core.io import atomic_path, write_csv
from gkt.core.runtime import resolve_device
from gkt.experiments.grid import STORE_NAME, ResultsStore, expand_grid, job_key, local_backend, run_study
from gkt.experiments.transfer_job import transfer_job
from gkt.reporting.adapt import method_summary, plot_delta_transf_vs_gap
from gkt.reporting.study import write_study_outputs
from gkt.reporting.study_tables import pair_means
from gkt.reporting.tables import format_table


@dataclass(frozen=True)
class StudyPlan:
    """A transfer grid: every student × teacher (different specs) × method × seed on ``data``'s train split
    (a stratified ``fraction`` as transfer set), evaluated on its test split."""

    students: Sequence[str]
    teachers: Sequence[str]
    methods: Sequence[str]
    seeds: Sequence[int]
    data: str
    fraction: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)  # epochs, lr, batch_size (omitted: transfer defaults)
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_dir: str | None = None
    zoo_dir: str | None = None
    device: str = "auto"

    def jobs(self) -> list[dict[str, Any]]:
        base = {"data": self.data, "fraction": self.fraction, "data_dir": self.data_dir, "zoo_dir": self.zoo_dir,
                "device": self.device, **{k: v for k, v in self.settings.items() if v is not None}}
        axes = {"student": list(self.students), "teacher": list(self.teachers), "method": list(self.methods),
                "seed": list(self.seeds)}
        jobs = expand_grid(base, axes, skip=lambda j: j["student"] == j["teacher"])
        for job in jobs:
            job["method_args"] = dict(self.method_args.get(job["method"], {}))
        return jobs


def transfer_study(plan: StudyPlan, run_dir: Path, labels: dict[str, str], workers: int = 1,
                   threads: int | None = None, figure: str = "fig9_delta_transf_vs_delta_acc.png",
                   title: str = "Transfer delta vs teacher-student accuracy gap", store_path: Path | None = None,
                   retry_failed: bool = False) -> dict[str, Any]:
    """Run ``plan``'s jobs into the results store (``store_path``, default ``run_dir/results.sqlite``; jobs
    finished there are skipped), then write, from the plan's finished jobs, the study tables and figures,
    ``by_method.csv`` (:func:`method_summary`) and the Δtransf vs Δacc figure. Jobs that failed before are
    rerun only with ``retry_failed``. ``labels`` gives short names
    for model specs in tables and the figure."""
    store = ResultsStore(store_path or run_dir / STORE_NAME)
    jobs = plan.jobs()
    backend = local_backend(workers, threads, resolve_device(plan.device))
    counts = run_study(transfer_job, jobs, store, backend, retry_failed=retry_failed)
    wanted = {job_key(j) for j in jobs}
    records = [{**r.config, **r.metrics, "student": labels.get(r.config["student"], r.config["student"]),
                "teacher": labels.get(r.config["teacher"], r.config["teacher"])}
               for r in store.rows() if r.key in wanted]
    if not records:
        raise GktError(f"no transfer job finished ({counts.describe('transfer jobs')}); see {store.path}")
    write_study_outputs(run_dir, records)
    summary = method_summary(records)
    write_csv(run_dir / "by_method.csv", summary)
    plot_delta_transf_vs_gap(pair_means(records), run_dir / figure, title)
    table = format_table(summary, markdown=True)
    previous = (run_dir / "summary.md").read_text() if (run_dir / "summary.md").is_file() else ""
    with atomic_path(run_dir / "summary.md") as tmp:
        tmp.write_text(f"## Δtransf by method, weaker vs stronger teachers (pp, mean ± std over seeds)\n\n{table}\n\n"
                       f"{previous}")
    return {"counts": counts, "summary": summary, "records": records, "store": store}
