"""The opening of a ``gkt improve`` report: the decision in one sentence, the teachers and why, the
per-class gains and losses on the certification split, the search, and the time it took."""

from __future__ import annotations

from typing import Any, Protocol


class DecisionLike(Protocol):
    accepted: bool
    summary: str
    ranking: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    certificate: dict[str, Any] | None
    seconds: dict[str, float]
    splits: dict[str, Any]


def _pp(value: float) -> str:
    return f"{100 * value:+.2f} pp"


def findings(decision: DecisionLike, classes: list[dict[str, Any]]) -> list[str]:
    """The report's Findings, in points as the terminal prints them."""
    out = [decision.summary]
    kept = [r for r in decision.ranking if r["kept"]]
    dropped = [r for r in decision.ranking if not r["kept"]]
    if decision.ranking:
        random = decision.ranking[0]["random_rho_pos"]
        text = (f"Teachers, ranked by the knowledge they hold for the student on the selection split (ρ_pos: right "
                f"where the student is wrong; the best random-init teacher: {100 * random:.2f}%): ")
        text += "; ".join(f"{r['spec']} {100 * r['rho_pos']:.2f}% (acc {100 * r['acc']:.2f}%)" for r in kept) or "none"
        if dropped:
            text += " — dropped as no better than a random teacher: " + ", ".join(
                f"{r['spec']} ({100 * r['rho_pos']:.2f}%)" for r in dropped)
        out.append(text + ".")
    scored = [c for c in decision.candidates if c.get("selection_acc") is not None]
    if decision.candidates:
        failed = len(decision.candidates) - len(scored)
        text = f"{len(decision.candidates)} candidate(s) searched on the selection split ({decision.splits.get('selection')} images)"
        if failed:
            text += f", {failed} failed"
        transfers = [c for c in scored if c["method"] != "ce"]
        controls = [c for c in scored if c["method"] == "ce"]
        if transfers:
            top = max(transfers, key=lambda c: c["selection_acc"])
            text += (f"; best transfer: {top['teachers']} ({top['method']}, lr {top['lr']:g}, {top['epochs']} "
                     f"epoch(s)) {_pp(top['selection_delta'])}")
        if controls:
            top = max(controls, key=lambda c: c["selection_acc"])
            text += (f"; cross-entropy fine-tuning control (lr {top['lr']:g}, {top['epochs']} epoch(s)) "
                     f"{_pp(top['selection_delta'])}")
        out.append(text + ".")
    if classes:
        gains = sorted((c for c in classes if c["delta_acc"] > 0), key=lambda c: -c["delta_acc"])[:3]
        losses = sorted((c for c in classes if c["delta_acc"] < 0), key=lambda c: c["delta_acc"])[:3]
        text = "On the certification split, per class: "
        text += ("gains in " + ", ".join(f"{c['class']} {_pp(c['delta_acc'])} (+{c['turned_right']}/-{c['turned_wrong']})"
                                         for c in gains)) if gains else "no class gained"
        text += ("; losses in " + ", ".join(f"{c['class']} {_pp(c['delta_acc'])} (+{c['turned_right']}/-"
                                              f"{c['turned_wrong']})" for c in losses)) if losses else "; no class lost"
        out.append(text + " (all classes in certification_classes.csv).")
    s = decision.seconds
    if s:
        out.append(f"Time: {s.get('total', 0):.0f} s in all: {s.get('search', 0):.0f} s searching (the candidate "
                   f"transfers took {s.get('transfers', 0):.0f} s, summed over the workers), {s.get('ranking', 0):.1f} s "
                   f"ranking the teachers, {s.get('certification', 0):.1f} s certifying.")
    return out
