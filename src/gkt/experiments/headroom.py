"""The demo's second act: transfer between students with headroom, beside two controls.

The demo's zoo recipes trained on a short budget (one epoch; cached like the zoo, under their own key)
are far from converged. Every ordered pair runs with the transfer methods, and two controls run per
student with the same budget and transfer set: the student distilled from its own frozen copy (``kl``
with teacher = student: no teacher knowledge) and plain cross-entropy fine-tuning on the labelled
transfer set (``ce``). A transfer that beats its student's own-copy control moved knowledge; one that
does not beat cross-entropy fine-tuning was, with labels at hand, not worth a teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gkt.experiments.grid import STORE_NAME, LocalBackend, ResultsStore, expand_grid, run_study
from gkt.experiments.transfer_job import transfer_job
from gkt.experiments.zoo import build_zoo, scaled_entries
from gkt.models.zoo import entry_path, get_entry, zoo_dir_default
from gkt.reporting.study import write_study_outputs
from gkt.reporting.study_tables import control_table, pair_means

HEADROOM_EPOCHS = 1  # the students' training budget (the full recipes train 5-25 epochs)
HEADROOM_TRANSFER_EPOCHS = 1  # the demo's transfer budget for them (10% of train, the transfer's lr)
HEADROOM_METHODS = ("kl", "kl-dp", "kl-dp-unsup")
HEADROOM_SEEDS = (0, 1)  # two seeds: one-epoch transfers are noisier than act 1's, and they are cheap
OWN_COPY, FINE_TUNING = "own copy (kl)", "ce fine-tuning"
CONTROLS = {OWN_COPY: "kl", FINE_TUNING: "ce"}  # control -> method, run with teacher = student


def build_headroom_models(names: Sequence[str], *, zoo_dir: str | Path | None = None, data_dir: str | None = None,
                          device: torch.device | None = None, workers: int = 1,
                          epochs: int = HEADROOM_EPOCHS) -> dict[str, str]:
    """Train (or find cached) the zoo recipes ``names`` on ``epochs`` epochs; returns ``{label: file spec}``
    with labels such as ``mlp@1ep``."""
    entries = scaled_entries(tuple(get_entry(n) for n in names), epochs)
    zoo_dir = Path(zoo_dir or zoo_dir_default())
    build_zoo(entries, zoo_dir=zoo_dir, device=device, data_dir=data_dir, check=False, workers=workers)
    return {f"{e.name}@{epochs}ep": f"file:{entry_path(e, zoo_dir).with_suffix('')}" for e in entries}


def headroom_jobs(models: dict[str, str], methods: Sequence[str], seeds: Sequence[int],
                  settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ordered pair x method x seed, then each control x student x seed (teacher = student)."""
    specs = list(models.values())
    jobs = expand_grid(settings, {"student": specs, "teacher": specs, "method": list(methods), "seed": list(seeds)},
                       skip=lambda j: j["student"] == j["teacher"])
    jobs += [{**settings, "student": s, "teacher": s, "method": method, "seed": seed, "control": control}
             for control, method in CONTROLS.items() for s in specs for seed in seeds]
    for job in jobs:
        job["method_args"] = {}
    return jobs


def run_headroom(models: dict[str, str], run_dir: Path, methods: Sequence[str] = HEADROOM_METHODS,
                 seeds: Sequence[int] = (0,), settings: dict[str, Any] | None = None, workers: int = 1,
                 threads: int | None = None) -> dict[str, Any]:
    """Run the second act's jobs into ``run_dir``'s results store and write its study outputs (the transfers'
    tables and figures, ``controls.csv`` and the findings); returns the counts and the two tables."""
    run_dir.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(run_dir / STORE_NAME)
    counts = run_study(transfer_job, headroom_jobs(models, methods, seeds, settings or {}), store,
                       LocalBackend(workers, threads), desc="second act")
    label = {spec: name for name, spec in models.items()}
    records = [{**r, "student": label.get(r["student"], r["student"]), "teacher": label.get(r["teacher"], r["teacher"])}
               for r in store.records() if r.get("status") == "done"]
    transfers = [r for r in records if not r.get("control")]
    controls = [r for r in records if r.get("control")]
    table = write_study_outputs(run_dir, transfers, controls) if transfers else []
    return {"counts": counts, "success_table": table,
            "controls": control_table(controls, pair_means(transfers)) if controls else []}
