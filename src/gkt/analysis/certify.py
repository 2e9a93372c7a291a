"""The certificate of ``gkt improve``: is a changed model no worse than the original on held-out images?

On the N images of a certification split, compare the original model and the changed one per image. Only
the *discordant* images carry evidence: ``n_plus`` turned right (original wrong, changed right) and
``n_minus`` turned wrong. Under the null hypothesis "no improvement" each discordant image is at most as
likely to turn right as wrong, so ``n_plus ~ Binomial(n_plus + n_minus, 1/2)`` at the boundary: the
one-sided exact test (exact McNemar) gives the p-value ``P(X >= n_plus)``. The accuracy change is
``Δacc = (n_plus - n_minus) / N``; its lower confidence bound at level ``1 - risk`` is
``(n_d / N) * (2 p_L - 1)`` with ``p_L`` the one-sided Clopper–Pearson lower bound of the share of
discordant images that turned right (conditional on their number ``n_d``). Clopper–Pearson inverts the
same exact test, so the bound is above zero exactly when the p-value is below ``risk``: accepting on the
bound and on the test is one decision.

The guarantee holds for *one* candidate tested once: choosing among many candidates on this split would
void it (select on another split; cf. Learn-then-Test, Angelopoulos et al. 2021).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from scipy import stats

from gkt.core.errors import GktError


@dataclass(frozen=True)
class Certificate:
    """The paired comparison of a changed model with its original on one certification split."""

    samples: int  # N, the certification split's size
    turned_right: int  # n_plus: original wrong, changed right
    turned_wrong: int  # n_minus: original right, changed wrong
    acc_before: float
    acc_after: float
    delta_acc: float  # (n_plus - n_minus) / N
    lower_bound: float  # one-sided lower confidence bound of delta_acc at level 1 - risk
    p_value: float  # one-sided exact McNemar test of "no improvement"
    risk: float
    accepted: bool  # lower_bound > 0 (equivalently p_value < risk)

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)

    def sentence(self) -> str:
        """The certificate in one line, in points."""
        verdict = "certified not worse (an improvement)" if self.accepted else "not certified"
        return (f"{verdict}: on {self.samples} held-out images {self.turned_right} turned right and "
                f"{self.turned_wrong} turned wrong; Δacc {100 * self.delta_acc:+.2f} pp, "
                f"{100 * (1 - self.risk):g}% lower bound {100 * self.lower_bound:+.2f} pp, "
                f"exact one-sided p = {self.p_value:.3g} (risk {self.risk:g})")


def certify(correct_before: torch.Tensor, correct_after: torch.Tensor, risk: float = 0.05) -> Certificate:
    """The certificate for the per-image correctness (``bool [N]``) of the original and the changed model
    on the same images, at ``risk`` (the chance of accepting a model that is in truth no better)."""
    if not 0 < risk < 1:
        raise GktError(f"the risk must be in (0, 1), got {risk}")
    if correct_before.shape != correct_after.shape or correct_before.ndim != 1:
        raise GktError("certify needs the two models' correctness on the same images")
    n = len(correct_before)
    if n == 0:
        raise GktError("the certification split is empty")
    plus = int((~correct_before & correct_after).sum())
    minus = int((correct_before & ~correct_after).sum())
    discordant = plus + minus
    if discordant:
        test = stats.binomtest(plus, discordant, 0.5, alternative="greater")
        p_value = float(test.pvalue)
        share_low = float(test.proportion_ci(confidence_level=1 - risk, method="exact").low)
        lower = discordant / n * (2 * share_low - 1)
    else:  # the two models agree on every image: no evidence either way
        p_value, lower = 1.0, 0.0
    return Certificate(n, plus, minus, correct_before.double().mean().item(), correct_after.double().mean().item(),
                       (plus - minus) / n, lower, p_value, risk, lower > 0)
