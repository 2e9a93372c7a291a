"""Tables and figures of a transfer study, read from its results store (paper Figs. 4, 5, 7, 8)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from statistics import mean, median, stdev
from typing import Any

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
    g, l the (seed-mean) counts of samples turned right / wrong; else 0 (also without ``test_samples``)."""
    n = pair.get("test_samples")
    if not n:
        return 0
    gained, lost = n * pair["knowledge_gain"], n * pair["knowledge_loss"]
    if gained + lost == 0:
        return 0
    score = (gained - lost) / math.sqrt(gained + lost)
    return int(score > z) - int(score < -z)


def success_table(pairs: Sequence[Record]) -> list[Record]:
    """Per method: share of pairs with seed-mean Δtransf > 0, the median over students of their success
    rate (paper Fig. 4a), mean Δtransf, gain and loss (percentage points), and the noise: the shares of
    pairs whose gain exceeds the loss beyond test-sample noise (clear gain) or the reverse (clear loss),
    see :func:`beyond_noise`, and with several seeds per pair the mean seed std of Δtransf."""
    by_method: dict[str, list[Record]] = defaultdict(list)
    for p in pairs:
        by_method[p["method"]].append(p)
    seeded = all(p.get("seeds", 1) > 1 for p in pairs)
    counted = all(p.get("test_samples") for p in pairs)
    rows = []
    for method, ps in by_method.items():
        per_student = student_success(ps)
        row = {"method": method, "pairs": len(ps), "success_%": 100 * mean(p["delta_transf"] > 0 for p in ps),
               "median_student_success_%": 100 * median(per_student.values()),
               "mean_delta_transf_pp": 100 * mean(p["delta_transf"] for p in ps),
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


def paper_claims(table: Sequence[Record]) -> list[Record]:
    """The paper's §5.1 success-rate claims checked against a success table (SPEC §6; claims whose
    methods the study did not run are left out)."""
    rate = {row["method"]: row["success_%"] for row in table}
    checks: list[tuple[str, str, bool]] = []  # (claim, measured, met)
    if "kl-dp" in rate:
        checks.append(("kl-dp success rate >= 85%", f"{rate['kl-dp']:.1f}%", rate["kl-dp"] >= 85))
    if {"kl", "kl-dp"} <= rate.keys():
        above = rate["kl-dp"] - rate["kl"]
        checks.append(("kl-dp at least 30 points above kl", f"{above:+.1f} points", above >= 30))
    if {"kl-dp", "kl-dp-unsup"} <= rate.keys():
        gap = rate["kl-dp-unsup"] - rate["kl-dp"]
        checks.append(("kl-dp-unsup within 15 points of kl-dp", f"{gap:+.1f} points", abs(gap) <= 15))
    if {"kl", "xekl-mcl", "kl-dp"} <= rate.keys():
        kl, mcl, dp = rate["kl"], rate["xekl-mcl"], rate["kl-dp"]
        checks.append(("xekl-mcl between kl and kl-dp", f"{kl:.1f} <= {mcl:.1f} <= {dp:.1f}", kl <= mcl <= dp))
    return [{"paper_claim": claim, "measured": measured, "met": "yes" if met else "NO"}
            for claim, measured, met in checks]


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
