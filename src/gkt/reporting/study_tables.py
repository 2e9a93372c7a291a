"""Tables and figures of a transfer study, read from its results store (paper Figs. 4, 5, 7, 8)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from statistics import mean, median, stdev
from typing import Any

import numpy as np
from scipy import stats

from gkt.core.config import GRID_KEYS

Record = dict[str, Any]


PAIR_FIELDS = ("student", "teacher", "method")


def setting(record: Record) -> str:
    """The hyperparameters of a record besides pair, method and seed (for grid summaries)."""
    keys = (*GRID_KEYS, "method_args")
    return ", ".join(f"{k}={record[k]}" for k in keys if k in record and record[k] not in (None, {}))


def pair_means(records: Sequence[Record], value: str = "delta_transf") -> list[Record]:
    """One row per (student, teacher, method, setting): the seeds' mean and sample std of ``value`` plus
    the other numeric metrics averaged."""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        groups[(*(r[f] for f in PAIR_FIELDS), setting(r))].append(r)
    rows = []
    for (student, teacher, method, hp), rs in groups.items():
        numeric = {k for k, v in rs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        row = {"student": student, "teacher": teacher, "method": method, "setting": hp, "seeds": len(rs)}
        for k in sorted(numeric - {"seed"}):
            values = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
            row[k] = mean(values) if values else math.nan
        row[f"{value}_std"] = stdev([r[value] for r in rs]) if len(rs) > 1 else 0.0
        row["student_family"], row["teacher_family"] = rs[0].get("student_family"), rs[0].get("teacher_family")
        row["delta_acc"] = row.get("acc_teacher", math.nan) - row.get("acc_student_before", math.nan)
        rows.append(row)
    return rows


def beyond_noise(pair: Record, z: float = 2.0) -> int:
    """+1 / −1 where the transferred student's knowledge gain exceeds its loss (or the reverse) by more
    than ``z`` standard errors of McNemar's paired test on the test samples, ``(g − l) / √(g + l)`` with
    g, l the (seed-mean) counts of samples turned right / wrong; else 0 (also without ``test_samples``).
    The normal approximation on purpose: seed means are not whole counts, which the exact test
    (``scipy.stats.binomtest``, as :func:`gkt.analysis.certify.certify` uses) needs."""
    n = pair.get("test_samples")
    if not n:
        return 0
    gained, lost = n * pair["knowledge_gain"], n * pair["knowledge_loss"]
    if gained + lost == 0:
        return 0
    score = (gained - lost) / math.sqrt(gained + lost)
    return int(score > z) - int(score < -z)


BOOTSTRAP_RESAMPLES = 2000


def _group_key(row: Record) -> tuple[str, str, str]:
    return row["student"], row["teacher"], row["setting"] if "setting" in row else setting(row)


def bootstrap_draws(rows: Sequence[Record], value: str = "delta_transf", resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per method, ``resamples`` bootstrap draws of its success rate (% of pairs with mean ``value`` > 0)
    and of its mean ``value`` (percentage points). ``rows`` are runs (several seeds per pair) or pair means.
    Pairs are drawn with replacement (``scipy.stats.bootstrap``), the same draw for every method
    (differences between methods are paired); where a pair has several seeds, its seeds are drawn with
    replacement too, in the statistic (the draw of seed positions is shared by the methods). Seeded: the
    same rows give the same intervals (:func:`interval`: percentile intervals, as scipy's
    ``method="percentile"``)."""
    pair_keys = sorted({_group_key(r) for r in rows})
    index = {k: i for i, k in enumerate(pair_keys)}
    runs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(rows, key=lambda r: r.get("seed", 0)):
        runs[r["method"]][index[_group_key(r)]].append(float(r[value]))
    seeds = max(len(v) for by_pair in runs.values() for v in by_pair.values())
    values = np.full((len(runs), len(pair_keys), seeds), np.nan)  # [methods, pairs, seeds]
    counts = np.zeros((len(runs), len(pair_keys)), dtype=int)
    for m, by_pair in enumerate(runs.values()):
        for i, v in by_pair.items():
            values[m, i, : len(v)], counts[m, i] = v, len(v)
    rng = np.random.default_rng(seed)

    def statistic(pair_draw: np.ndarray, axis: int = -1) -> np.ndarray:
        """``[methods, 2, resamples]``: success rate and mean of each resample of pairs ``[resamples, pairs]``,
        each drawn pair's seeds resampled."""
        seed_draw = rng.random((*pair_draw.shape, seeds))  # drawn after the pairs, from the same generator
        out = []
        for m in range(len(runs)):
            counts_drawn = counts[m][pair_draw]  # [resamples, pairs]
            picks = np.floor(seed_draw * np.maximum(counts_drawn, 1)[..., None]).astype(int)
            used = np.arange(seeds) < counts_drawn[..., None]  # a pair with c seeds draws c of them
            picked = np.where(used, values[m][pair_draw[..., None], picks], 0.0)
            means = picked.sum(-1) / np.maximum(counts_drawn, 1)  # [resamples, pairs]: resampled seed means
            present = counts_drawn > 0  # pairs the method did not run drop out of its draws
            n = np.maximum(present.sum(-1), 1)
            out.append([100 * np.where(present, means > 0, False).sum(-1) / n,
                        100 * np.where(present, means, 0.0).sum(-1) / n])
        return np.asarray(out)

    if len(pair_keys) > 1:
        draws = stats.bootstrap((np.arange(len(pair_keys)),), statistic, n_resamples=resamples, vectorized=True,
                                method="percentile", rng=rng).bootstrap_distribution
    else:  # scipy needs two pairs to resample; one pair is every draw (no random numbers are used for it)
        draws = statistic(np.zeros((resamples, 1), dtype=int))
    return {method: {"success": draws[m, 0], "mean": draws[m, 1]} for m, method in enumerate(runs)}


def interval(draws: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap draws (what ``scipy.stats.bootstrap(method="percentile")``
    gives: linear interpolation between order statistics)."""
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def success_table(pairs: Sequence[Record], runs: Sequence[Record] | None = None) -> list[Record]:
    """Per method: share of pairs with seed-mean Δtransf > 0 and mean Δtransf (percentage points), each
    with its 95% bootstrap interval (:func:`bootstrap_draws` over ``runs`` when given, else over the
    pairs), the median over students of their success rate (paper Fig. 4a), min Δtransf, mean gain and
    loss, and the noise: the shares of pairs whose gain exceeds the loss beyond test-sample noise (clear
    gain) or the reverse (clear loss), see :func:`beyond_noise`, and with several seeds per pair the mean
    seed std of Δtransf."""
    by_method: dict[str, list[Record]] = defaultdict(list)
    for p in pairs:
        by_method[p["method"]].append(p)
    seeded = all(p.get("seeds", 1) > 1 for p in pairs)
    counted = all(p.get("test_samples") for p in pairs)
    draws = bootstrap_draws(runs if runs is not None else pairs)
    rows = []
    for method, ps in by_method.items():
        per_student = student_success(ps)
        (s_lo, s_hi), (m_lo, m_hi) = interval(draws[method]["success"]), interval(draws[method]["mean"])
        row = {"method": method, "pairs": len(ps), "success_%": 100 * mean(p["delta_transf"] > 0 for p in ps),
               "success_lo_%": s_lo, "success_hi_%": s_hi,
               "median_student_success_%": 100 * median(per_student.values()),
               "mean_delta_transf_pp": 100 * mean(p["delta_transf"] for p in ps),
               "mean_delta_transf_lo_pp": m_lo, "mean_delta_transf_hi_pp": m_hi,
               "min_delta_transf_pp": 100 * min(p["delta_transf"] for p in ps),
               "mean_gain_pp": 100 * mean(p["knowledge_gain"] for p in ps),
               "mean_loss_pp": 100 * mean(p["knowledge_loss"] for p in ps)}
        if seeded:
            row |= {"seeds": min(p["seeds"] for p in ps), "seed_std_pp": 100 * mean(p["delta_transf_std"] for p in ps)}
        if counted:
            signs = [beyond_noise(p) for p in ps]
            row |= {"clear_gain_%": 100 * mean(s > 0 for s in signs), "clear_loss_%": 100 * mean(s < 0 for s in signs)}
        rows.append(row)
    return sorted(rows, key=lambda r: r["success_%"])


HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided at this scale"


def verdict(lo: float, hi: float, low: float | None = None, high: float | None = None) -> str:
    """A claim "statistic within [low, high]" judged on the statistic's 95% interval [lo, hi]: *holds*
    when the whole interval is inside, *fails* when it is wholly outside, else *undecided at this scale*."""
    if (low is None or lo >= low) and (high is None or hi <= high):
        return HOLDS
    if (low is not None and hi < low) or (high is not None and lo > high):
        return FAILS
    return UNDECIDED


def paper_claims(table: Sequence[Record], draws: dict[str, dict[str, np.ndarray]]) -> list[Record]:
    """The paper's §5.1 claims judged on a success table and its bootstrap draws (claims whose methods
    the study did not run are left out): the measured statistic, its 95% interval and the verdict."""
    rate = {row["method"]: row["success_%"] for row in table}
    avg = {row["method"]: row["mean_delta_transf_pp"] for row in table}
    s = {m: d["success"] for m, d in draws.items()}
    checks: list[tuple[str, float, np.ndarray, float | None, float | None, str]] = []  # (.., number format)
    if "kl-dp" in rate:
        checks.append(("kl-dp success rate >= 85%", rate["kl-dp"], s["kl-dp"], 85, None, "{:.1f}%"))
        checks.append(("kl-dp gains on average (mean Δtransf > 0)", avg["kl-dp"], draws["kl-dp"]["mean"],
                       1e-9, None, "{:+.3f} pp"))
    if {"kl", "kl-dp"} <= rate.keys():
        checks.append(("kl-dp success at least 30 points above kl", rate["kl-dp"] - rate["kl"], s["kl-dp"] - s["kl"],
                       30, None, "{:+.1f} points"))
    if {"kl-dp", "kl-dp-unsup"} <= rate.keys():
        checks.append(("kl-dp-unsup success within 15 points of kl-dp", rate["kl-dp-unsup"] - rate["kl-dp"],
                       s["kl-dp-unsup"] - s["kl-dp"], -15, 15, "{:+.1f} points"))
    if {"kl", "xekl-mcl", "kl-dp"} <= rate.keys():
        checks.append(("xekl-mcl success between kl and kl-dp (smaller margin >= 0)",
                       min(rate["xekl-mcl"] - rate["kl"], rate["kl-dp"] - rate["xekl-mcl"]),
                       np.minimum(s["xekl-mcl"] - s["kl"], s["kl-dp"] - s["xekl-mcl"]), 0, None, "{:+.1f} points"))
    rows = []
    for claim, measured, claim_draws, low, high, number in checks:
        lo, hi = interval(claim_draws)
        bare = number.split("}")[0] + "}"
        rows.append({"paper_claim": claim, "measured": number.format(measured),
                     "interval_95": f"[{bare.format(lo)}, {bare.format(hi)}]", "verdict": verdict(lo, hi, low, high)})
    return rows


def _name(spec: str) -> str:
    return spec.removeprefix("zoo:")


def findings(pairs: Sequence[Record], table: Sequence[Record]) -> list[str]:
    """A few sentences generated from the numbers: each method's success rate and mean Δtransf with their
    intervals and its worst pair; which methods never lost beyond test-sample noise; which gain or lose on
    average beyond the bootstrap's doubt."""
    seeds = sorted({p.get("seeds", 1) for p in pairs})
    n_pairs = len({_group_key(p) for p in pairs})
    lines = [f"{n_pairs} teacher → student pairs, {'/'.join(map(str, seeds))} seed(s) each; intervals are 95% "
             "bootstrap intervals over pairs (and seeds)."]
    for row in sorted(table, key=lambda r: -r["mean_delta_transf_pp"]):
        ps = [p for p in pairs if p["method"] == row["method"]]
        worst = min(ps, key=lambda p: p["delta_transf"])
        lines.append(f"{row['method']}: Δtransf > 0 on {row['success_%']:.0f}% of pairs "
                     f"[{row['success_lo_%']:.0f}, {row['success_hi_%']:.0f}], mean Δtransf "
                     f"{row['mean_delta_transf_pp']:+.3f} pp [{row['mean_delta_transf_lo_pp']:+.3f}, "
                     f"{row['mean_delta_transf_hi_pp']:+.3f}]; worst pair {_name(worst['teacher'])} → "
                     f"{_name(worst['student'])} {100 * worst['delta_transf']:+.2f} pp.")
    if all("clear_loss_%" in row for row in table):
        safe = [r["method"] for r in table if r["clear_loss_%"] == 0]
        lossy = [f"{r['method']} ({r['clear_loss_%']:.0f}% of pairs)" for r in table if r["clear_loss_%"] > 0]
        if safe:
            lines.append(f"Never lost beyond test-sample noise (McNemar, 2 s.e.): {', '.join(safe)}.")
        if lossy:
            lines.append(f"Lost clearly on some pairs: {', '.join(lossy)}.")
    up = [r["method"] for r in table if r["mean_delta_transf_lo_pp"] > 0]
    down = [r["method"] for r in table if r["mean_delta_transf_hi_pp"] < 0]
    flat = [r["method"] for r in table if r["method"] not in up + down]
    for methods, text in ((up, "gain on average"), (down, "lose on average"),
                          (flat, "cannot be told from no change on average at this scale")):
        if methods:
            lines.append(f"{', '.join(methods)}: {text} (mean Δtransf interval "
                         f"{'above' if methods is up else 'below' if methods is down else 'includes'} zero).")
    return lines


def control_table(controls: Sequence[Record], pairs: Sequence[Record]) -> list[Record]:
    """Per student: the Δtransf (pp, seed mean) of each control run (``control`` names it) beside each
    transfer method's mean Δtransf over the student's teachers."""
    students = sorted({r["student"] for r in controls} | {p["student"] for p in pairs})
    names = sorted({r["control"] for r in controls})
    methods = sorted({p["method"] for p in pairs})
    rows = []
    for s in students:
        row: Record = {"student": s}
        for name in names:
            values = [r["delta_transf"] for r in controls if r["student"] == s and r["control"] == name]
            row[f"{name} (pp)"] = 100 * mean(values) if values else math.nan
        for m in methods:
            values = [p["delta_transf"] for p in pairs if p["student"] == s and p["method"] == m]
            row[f"{m}: mean over teachers (pp)"] = 100 * mean(values) if values else math.nan
        rows.append(row)
    return rows


def control_findings(controls: Sequence[Record], pairs: Sequence[Record]) -> list[str]:
    """Sentences comparing the transfers with the controls: each control's mean over students (95%
    bootstrap interval over students) and, per method, the share of pairs above their student's control."""
    lines = []
    names = sorted({r["control"] for r in controls})
    per_student: dict[str, dict[str, float]] = {}
    for name in names:
        by_student: dict[str, list[float]] = defaultdict(list)
        for r in controls:
            if r["control"] == name:
                by_student[r["student"]].append(r["delta_transf"])
        per_student[name] = {s: mean(v) for s, v in by_student.items()}
        values = np.array(list(per_student[name].values()))
        draws = 100 * values[np.random.default_rng(0).integers(0, len(values), (BOOTSTRAP_RESAMPLES, len(values)))].mean(-1)
        lo, hi = interval(draws)
        lines.append(f"Control {name}: mean Δtransf {100 * values.mean():+.3f} pp [{lo:+.3f}, {hi:+.3f}] over "
                     f"{len(values)} students (from {100 * values.min():+.2f} to {100 * values.max():+.2f}).")
    for method in sorted({p["method"] for p in pairs}):
        ps = [p for p in pairs if p["method"] == method]
        above = [f"its student's {name} in {sum(p['delta_transf'] > per_student[name].get(p['student'], math.inf) for p in ps)}"
                 f" of {len(ps)} pairs" for name in names]
        lines.append(f"{method} beats " + "; ".join(above) + ".")
    return lines


def student_success(pairs: Sequence[Record]) -> dict[str, float]:
    """Success rate per student: the share of its teachers with mean Δtransf > 0."""
    by_student: dict[str, list[bool]] = defaultdict(list)
    for p in pairs:
        by_student[p["student"]].append(p["delta_transf"] > 0)
    return {s: mean(v) for s, v in by_student.items()}


def best_settings(pairs: Sequence[Record]) -> list[Record]:
    """Per method, every hyperparameter setting's success rate and mean Δtransf, best first (appendix A)."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for p in pairs:
        groups[(p["method"], p["setting"])].append(p)
    rows = [{"method": m, "setting": s, "pairs": len(ps), "success_%": 100 * mean(p["delta_transf"] > 0 for p in ps),
             "mean_delta_transf_pp": 100 * mean(p["delta_transf"] for p in ps)} for (m, s), ps in groups.items()]
    return sorted(rows, key=lambda r: (r["method"], -r["success_%"], -r["mean_delta_transf_pp"]))
