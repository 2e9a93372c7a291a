from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gkt.experiments.grid import LocalBackend, RayBackend, ResultsStore, expand_grid, job_key, run_study


def seeded_job(config: dict) -> dict:
    """A small deterministic torch computation standing in for a transfer run."""
    g = torch.Generator().manual_seed(config["seed"])
    w = torch.randn(8, 8, generator=g) * config["scale"]
    if config.get("fail"):
        raise ValueError("asked to fail")
    return {"value": float(torch.linalg.matrix_norm(w @ w.T)), "seed": config["seed"]}


GRID = {"seed": [0, 1, 2], "scale": [0.5, 2.0]}


def test_expand_grid_and_keys() -> None:
    jobs = expand_grid({"method": "kl"}, GRID, skip=lambda j: j["seed"] == 2 and j["scale"] == 2.0)
    assert len(jobs) == 5 and jobs[0] == {"method": "kl", "seed": 0, "scale": 0.5}
    assert job_key({"a": 1, "b": 2}) == job_key({"b": 2, "a": 1})


def test_rerun_skips_done_jobs_and_records_failures(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    jobs = expand_grid({}, GRID) + [{"seed": 9, "scale": 1.0, "fail": True}]
    counts = run_study(seeded_job, jobs, store, LocalBackend(1))
    assert counts.as_dict() == {"total": 7, "skipped": 0, "done": 6, "failed": 1, "not_retried": 0,
                                 "skipped_images": 0}
    assert counts.failed == [job_key(jobs[-1])] and not counts.ok
    assert "asked to fail" in store.rows("failed")[0].metrics["error"]
    again = run_study(seeded_job, jobs, store, LocalBackend(1))
    assert again.as_dict() == {"total": 7, "skipped": 6, "done": 0, "failed": 0, "not_retried": 1,
                               "skipped_images": 0}
    assert not again.ok and "1 failed before (not retried" in again.describe()
    assert len(store.records()) == 6
    retried = run_study(seeded_job, jobs, store, LocalBackend(1), retry_failed=True)  # it runs (and fails) again
    assert retried.as_dict() == {"total": 7, "skipped": 6, "done": 0, "failed": 1, "not_retried": 0,
                                 "skipped_images": 0}


def test_local_pool_matches_inline(tmp_path: Path) -> None:
    jobs = expand_grid({}, GRID)
    inline, pooled = ResultsStore(tmp_path / "a.sqlite"), ResultsStore(tmp_path / "b.sqlite")
    run_study(seeded_job, jobs, inline, LocalBackend(1))
    run_study(seeded_job, jobs, pooled, LocalBackend(2, threads=1))
    assert [(r.key, r.metrics) for r in inline.rows()] == [(r.key, r.metrics) for r in pooled.rows()]


def test_killed_study_resumes_only_missing(tmp_path: Path) -> None:
    """SIGKILL a study mid-way; the re-run finishes only the jobs without a row."""
    db = tmp_path / "kill.sqlite"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_studies import seeded_job
        from gkt.experiments.grid import LocalBackend, ResultsStore, expand_grid, run_study

        def slow(config):
            if config["seed"] >= 1:
                time.sleep(60)
            return seeded_job(config)

        run_study(slow, expand_grid({{}}, {GRID!r}), ResultsStore({str(db)!r}), LocalBackend(1))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    store = ResultsStore(db)
    for _ in range(600):
        if len(store.done_keys()) >= 2 or proc.poll() is not None:
            break
        import time

        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(store.done_keys()) == 2  # seed 0 x both scales
    counts = run_study(seeded_job, expand_grid({}, GRID), store, LocalBackend(1))
    assert counts.skipped == 2 and counts.done == 4  # the dead driver's claim is taken over at once
    full = ResultsStore(tmp_path / "full.sqlite")
    run_study(seeded_job, expand_grid({}, GRID), full, LocalBackend(1))
    assert [(r.key, r.metrics) for r in store.rows()] == [(r.key, r.metrics) for r in full.rows()]


def test_ray_backend_matches_local(tmp_path: Path) -> None:
    """A local Ray instance (14–40 s on 2 cores) writes the same table as the inline backend. Under
    `./run test` (`uv run --no-sync`) Ray is imported here before the backend runs: its uv hook must stay off."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    jobs = expand_grid({}, GRID)
    local, remote = ResultsStore(tmp_path / "l.sqlite"), ResultsStore(tmp_path / "r.sqlite")
    run_study(seeded_job, jobs, local, LocalBackend(1))
    run_study(seeded_job, jobs, remote, RayBackend(local_cpus=2))
    assert [(r.key, r.config, r.metrics) for r in local.rows()] == [(r.key, r.config, r.metrics) for r in remote.rows()]


def test_success_table_reports_noise() -> None:
    from gkt.reporting.study_tables import pair_means, success_table

    # (student, method): per seed (Δtransf, knowledge gain, knowledge loss) on 10,000 test samples
    runs = {("a", "kl-dp"): [(0.010, 0.012, 0.002), (0.012, 0.014, 0.002), (0.011, 0.013, 0.002)],
            ("b", "kl-dp"): [(0.002, 0.004, 0.002), (-0.002, 0.002, 0.004), (0.001, 0.003, 0.002)],
            ("a", "kl"): [(-0.02, 0.01, 0.03), (-0.03, 0.01, 0.04), (-0.025, 0.01, 0.035)],
            ("b", "kl"): [(0.001, 0.003, 0.002), (0.0, 0.002, 0.002), (-0.001, 0.002, 0.003)]}
    records = [{"student": s, "teacher": "t", "method": m, "seed": seed, "delta_transf": d, "knowledge_gain": g,
                "knowledge_loss": lo, "test_samples": 10_000}
               for (s, m), rs in runs.items() for seed, (d, g, lo) in enumerate(rs)]
    pairs = pair_means(records)
    assert next(p for p in pairs if p["student"] == "a" and p["method"] == "kl")["delta_transf_std"] == pytest.approx(0.005)
    table = {r["method"]: r for r in success_table(pairs)}
    # b/kl-dp: +0.03 pp from 30 vs 27 samples is inside the noise; a/kl-dp: 130 vs 20 is not
    assert table["kl-dp"]["success_%"] == 100 and table["kl-dp"]["clear_gain_%"] == 50
    assert table["kl"]["success_%"] == 0 and table["kl"]["clear_loss_%"] == 50 and table["kl"]["clear_gain_%"] == 0
    assert table["kl"]["seeds"] == 3 and table["kl"]["seed_std_pp"] == pytest.approx(100 * (0.005 + 0.001) / 2)
    single = success_table(pair_means([r for r in records if r["seed"] == 0]))
    assert "seed_std_pp" not in single[0] and "clear_gain_%" in single[0]
    unknown_n = success_table(pair_means([{**r, "test_samples": None} for r in records]))
    assert "clear_gain_%" not in unknown_n[0]


def test_pairs_of_a_student_mode_grid_stay_apart() -> None:
    from gkt.reporting.study_tables import pair_means

    records = [{"student": "s", "teacher": "t", "method": "kl-dp", "seed": 0, "student_mode": mode, "delta_transf": d}
               for mode, d in (("train", 0.01), ("eval", -0.01))]
    assert sorted((p["setting"], p["seeds"], p["delta_transf"]) for p in pair_means(records)) == [
        ("student_mode=eval", 1, -0.01), ("student_mode=train", 1, 0.01)]


def _runs(effects: dict[str, float], pairs: int = 12, seeds: int = 2, noise: float = 0.001) -> list[dict]:
    """Synthetic study runs: per method a true mean Δtransf, Gaussian noise per seed."""
    import random

    rng = random.Random(0)
    runs = [{"student": f"s{i}", "teacher": "t", "method": m, "seed": seed, "delta_transf": rng.gauss(mu, noise)}
            for m, mu in effects.items() for i in range(pairs) for seed in range(seeds)]
    return [{**r, "knowledge_gain": 0.01 + max(r["delta_transf"], 0), "knowledge_loss": 0.01 - min(r["delta_transf"], 0)}
            for r in runs]


def test_bootstrap_intervals_cover_the_estimate_and_are_seeded() -> None:
    from gkt.reporting.study_tables import bootstrap_draws, interval, pair_means, success_table

    runs = _runs({"kl": -0.01, "kl-dp": 0.0})
    table = {r["method"]: r for r in success_table(pair_means(runs), runs)}
    assert table["kl"]["success_%"] == 0 and table["kl"]["success_lo_%"] == table["kl"]["success_hi_%"] == 0
    dp = table["kl-dp"]
    assert dp["success_lo_%"] < dp["success_%"] < dp["success_hi_%"]
    assert dp["mean_delta_transf_lo_pp"] < dp["mean_delta_transf_pp"] < dp["mean_delta_transf_hi_pp"]
    assert dp["mean_delta_transf_lo_pp"] < 0 < dp["mean_delta_transf_hi_pp"]  # zero-mean noise: no sign
    again = bootstrap_draws(runs)
    assert interval(again["kl-dp"]["success"]) == (dp["success_lo_%"], dp["success_hi_%"])
    # resampling the seeds widens the interval over the pair means alone
    pairs_only = {r["method"]: r for r in success_table(pair_means(runs))}["kl-dp"]
    width = lambda r: r["mean_delta_transf_hi_pp"] - r["mean_delta_transf_lo_pp"]
    assert width(dp) > width(pairs_only)


def test_paper_claims_are_judged_on_intervals() -> None:
    from gkt.reporting.study_tables import (
        FAILS,
        HOLDS,
        UNDECIDED,
        bootstrap_draws,
        pair_means,
        paper_claims,
        success_table,
        verdict,
    )

    assert verdict(86, 95, low=85) == HOLDS and verdict(60, 84, low=85) == FAILS and verdict(80, 90, low=85) == UNDECIDED
    assert verdict(-5, 5, -15, 15) == HOLDS and verdict(16, 30, -15, 15) == FAILS and verdict(-20, 0, -15, 15) == UNDECIDED
    runs = _runs({"kl": -0.01, "xekl-mcl": 0.0, "kl-dp": 0.01, "kl-dp-unsup": -0.001}, pairs=20)
    table = success_table(pair_means(runs), runs)
    claims = {c["paper_claim"]: c for c in paper_claims(table, bootstrap_draws(runs))}
    assert claims["kl-dp success rate >= 85%"]["verdict"] == HOLDS  # every pair gains
    assert claims["kl-dp success rate >= 85%"]["interval_95"] == "[100.0, 100.0]"
    assert claims["kl-dp success at least 30 points above kl"]["verdict"] == HOLDS
    assert claims["kl-dp gains on average (mean Δtransf > 0)"]["verdict"] == HOLDS
    assert claims["kl-dp-unsup success within 15 points of kl-dp"]["verdict"] == FAILS  # about 16% vs 100%
    assert claims["xekl-mcl success between kl and kl-dp (smaller margin >= 0)"]["verdict"] == HOLDS
    noisy = _runs({"kl": 0.0, "kl-dp": 0.0}, pairs=10)
    some = paper_claims(success_table(pair_means(noisy), noisy), bootstrap_draws(noisy))
    assert [c["verdict"] for c in some] == [FAILS, UNDECIDED, UNDECIDED]


def test_study_outputs_open_with_findings(tmp_path: Path) -> None:
    from gkt.reporting.html import write_report
    from gkt.reporting.study import write_study_outputs

    runs = [{**r, "acc_teacher": 0.8, "acc_student_before": 0.85, "test_samples": 10_000, "student_params": 100}
            for r in _runs({"kl": -0.01, "kl-dp": 0.002})]
    controls = [{"student": f"s{i}", "teacher": f"s{i}", "method": m, "control": c, "seed": 0, "delta_transf": d}
                for i in range(12) for m, c, d in (("kl", "own copy (kl)", 0.0), ("ce", "ce fine-tuning", 0.004))]
    write_study_outputs(tmp_path, runs, controls)
    with open(tmp_path / "success_table.csv") as f:
        header = f.readline().strip().split(",")
    assert {"success_lo_%", "success_hi_%", "mean_delta_transf_lo_pp", "mean_delta_transf_hi_pp"} <= set(header)
    assert (tmp_path / "summary.md").read_text().startswith("## Findings")
    html_path, md_path = write_report(tmp_path, "gkt demo — act 2")
    md = md_path.read_text()
    assert md.startswith("# gkt demo — act 2\n") and "<h1>gkt demo — act 2</h1>" in html_path.read_text()
    assert md.splitlines()[2] == "## Findings" and "kl-dp gains on average" in md
    assert "Never lost beyond test-sample noise (McNemar, 2 s.e.): kl-dp." in md
    assert "Control ce fine-tuning: mean Δtransf +0.400 pp [+0.400, +0.400] over 12 students" in md
    assert "kl-dp beats its student's ce fine-tuning in 0 of 12 pairs; its student's own copy (kl) in 12 of 12" in md
    page = html_path.read_text()
    assert page.index("Findings") < page.index("<img") < page.index("success_table.csv")
    assert 'class="holds"' in page and "runs.csv" not in page
    # the per-pair table: useful columns only, in percentage points, sorted by method then Δtransf
    pairs_md = md.split("## pairs.csv")[1].split("\n## ")[0]
    assert "knowledge_gain" not in pairs_md and "| Δtransf (pp)" in pairs_md
    assert pairs_md.index("| kl ") < pairs_md.index("| kl-dp ")


def test_student_figure_with_no_finite_transfer_rate(tmp_path: Path) -> None:
    """Teachers without positive flips give NaN transfer rates; the figure still renders (log axis skipped)."""
    from gkt.reporting.study_figures import plot_by_student

    pairs = [{"student": f"zoo:s{i}", "teacher": "zoo:t", "method": m, "delta_transf": 0.001 * i, "transfer_rate_top100": math.nan,
              "student_params": 1000 * (i + 1), "student_family": "mlp", "knowledge_gain": 0.01,
              "knowledge_loss": 0.01} for i in range(3) for m in ("kl", "kl-dp")]
    assert plot_by_student(pairs, tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def _hand_written_draws(rows: list[dict], resamples: int = 2000, seed: int = 0) -> dict:
    """The nested bootstrap as gkt computed it by hand before scipy.stats.bootstrap drew the pairs."""
    from collections import defaultdict

    import numpy as np

    from gkt.reporting.study_tables import _group_key

    pair_keys = sorted({_group_key(r) for r in rows})
    index = {k: i for i, k in enumerate(pair_keys)}
    runs: dict = defaultdict(lambda: defaultdict(list))
    for r in sorted(rows, key=lambda r: r.get("seed", 0)):
        runs[r["method"]][index[_group_key(r)]].append(float(r["delta_transf"]))
    seeds = max(len(v) for by_pair in runs.values() for v in by_pair.values())
    rng = np.random.default_rng(seed)
    pair_draw = rng.integers(0, len(pair_keys), (resamples, len(pair_keys)))
    seed_draw = rng.random((resamples, len(pair_keys), seeds))
    draws = {}
    for method, by_pair in runs.items():
        values = np.full((len(pair_keys), seeds), np.nan)
        counts = np.zeros(len(pair_keys), dtype=int)
        for i, v in by_pair.items():
            values[i, : len(v)], counts[i] = v, len(v)
        counts_drawn = counts[pair_draw]
        picks = np.floor(seed_draw * np.maximum(counts_drawn, 1)[..., None]).astype(int)
        used = np.arange(seeds) < counts_drawn[..., None]
        picked = np.where(used, values[pair_draw[..., None], picks], 0.0)
        means = picked.sum(-1) / np.maximum(counts_drawn, 1)
        present = counts_drawn > 0
        n = np.maximum(present.sum(-1), 1)
        draws[method] = {"success": 100 * np.where(present, means > 0, False).sum(-1) / n,
                         "mean": 100 * np.where(present, means, 0.0).sum(-1) / n}
    return draws


@pytest.mark.parametrize("shape", ["seeds", "pair means", "uneven seeds, a pair one method skipped", "one pair"])
def test_scipy_bootstrap_gives_the_hand_written_draws(shape: str) -> None:
    """scipy.stats.bootstrap (percentile method) with the same seed gives the numbers gkt's hand-written
    nested bootstrap gave (results/ stay reproducible)."""
    import numpy as np

    from gkt.reporting.study_tables import bootstrap_draws, pair_means

    runs = _runs({"kl": -0.001, "kl-dp": 0.001}, pairs=1 if shape == "one pair" else 9, seeds=3, noise=0.003)
    if shape == "pair means":
        runs = pair_means(runs)
    elif shape.startswith("uneven"):
        runs = [r for r in runs if not (r["student"] == "s1" and r["seed"] == 2)
                and not (r["student"] == "s2" and r["method"] == "kl")]
    ours, reference = bootstrap_draws(runs, seed=3), _hand_written_draws(runs, seed=3)
    assert ours.keys() == reference.keys()
    for method in ours:
        for stat in ("success", "mean"):
            np.testing.assert_allclose(ours[method][stat], reference[method][stat], rtol=0, atol=1e-12)
