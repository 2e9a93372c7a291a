"""Each method's loss against a hand computation on tiny tensors; DP masks; MCL slow weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gkt.transfer import create_method
from gkt.transfer.base import FROZEN_LOGITS, TEACHER_FEATURES, Step, TransferMethod
from gkt.transfer.contrastive import nce_loss, similarity_kl
from gkt.transfer.mcl import interpolate_weights

S = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])  # student logits
T = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, -2.0]])  # teacher logits
Y = torch.tensor([0, 2])


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def step(student: torch.Tensor = S, labels: torch.Tensor | None = Y, **targets: torch.Tensor) -> Step:
    return Step(student.clone().requires_grad_(), targets, torch.arange(len(student)), torch.Generator(), labels)


def run(method: TransferMethod, s: Step) -> dict[str, torch.Tensor]:
    """As the trainer does: the method's prepared targets, then its losses."""
    s.targets = method.prepare_targets(s.targets, s.labels)
    return method(s)


def total(losses: dict[str, torch.Tensor]) -> float:
    return sum(v.item() for v in losses.values())


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_kl_matches_hand_computation(t: float) -> None:
    expected = t ** 2 * sum(kl(softmax(tr, t), softmax(sr, t)) for tr, sr in zip(T.tolist(), S.tolist())) / 2
    losses = run(create_method("kl", {"temperature": t}), step(teacher_logits=T))
    assert total(losses) == pytest.approx(expected, rel=1e-5)


def test_xekl_and_label_smoothing() -> None:
    kl_term = sum(kl(softmax(tr), softmax(sr)) for tr, sr in zip(T.tolist(), S.tolist())) / 2
    log_p = [[math.log(v) for v in softmax(sr)] for sr in S.tolist()]
    xe = -(log_p[0][0] + log_p[1][2]) / 2
    assert total(run(create_method("xekl", {"lam": 0.3}), step(teacher_logits=T))) == pytest.approx(
        0.3 * kl_term + 0.7 * xe, rel=1e-5)
    eps = 0.2  # smoothed target: (1 - eps) on the label + eps/C on every class
    xe_ls = sum(-(1 - eps) * lp[y] - eps * sum(lp) / 3 for lp, y in zip(log_p, Y.tolist())) / 2
    assert total(run(create_method("xekl-ls", {"lam": 0.5, "smoothing": eps}), step(teacher_logits=T))) == pytest.approx(
        0.5 * kl_term + 0.5 * xe_ls, rel=1e-5)


def test_topk_kl_renormalises_over_teacher_top_classes() -> None:
    # teacher top-2: row 0 -> classes {0, 1}; row 1 -> classes {1, 0}
    expected = (kl(softmax([1.0, 1.0]), softmax([2.0, 0.0])) + kl(softmax([3.0, 0.0]), softmax([1.5, 0.5]))) / 2
    assert total(run(create_method("kl-topk", {"k": 2}), step(teacher_logits=T))) == pytest.approx(expected, rel=1e-5)
    full = run(create_method("kl-topk", {"k": 3}), step(teacher_logits=T))
    assert total(full) == pytest.approx(total(run(create_method("kl"), step(teacher_logits=T))), rel=1e-6)


def test_soft_cross_entropy() -> None:
    expected = sum(-sum(p * math.log(q) for p, q in zip(softmax(tr), softmax(sr)))
                   for tr, sr in zip(T.tolist(), S.tolist())) / 2
    assert total(run(create_method("ce-soft"), step(teacher_logits=T))) == pytest.approx(expected, rel=1e-5)


def test_dp_masks_on_hand_made_probabilities() -> None:
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]).log()
    frozen = torch.tensor([[0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1]]).log()
    labels = torch.tensor([0, 2, 1, 0])
    # true-class probabilities: t 0.7/0.3/0.3/0.5 vs st 0.5/0.6/0.3/0.1 -> teacher, st, st (tie), teacher
    sup = create_method("kl-dp").teacher_mask(teacher, frozen, labels)
    assert sup.tolist() == [True, False, False, True]
    # max probabilities: t 0.7/0.6/0.4/0.5 vs st 0.5/0.6/0.4/0.8 -> teacher, st (tie), st (tie), st
    unsup = create_method("kl-dp-unsup").teacher_mask(teacher, frozen, None)
    assert unsup.tolist() == [True, False, False, False]


def test_kl_dp_loss_is_eq5() -> None:
    frozen = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 4.0]])
    # row 0: label 0, p_t(0) = e/(2e+1) > p_st(0) -> teacher; row 1: label 2, frozen far more confident -> frozen
    expected = (kl(softmax(T[0].tolist()), softmax(S[0].tolist()))
                + kl(softmax(frozen[1].tolist()), softmax(S[1].tolist()))) / 2
    losses = run(create_method("kl-dp"), step(teacher_logits=T, frozen_logits=frozen))
    assert total(losses) == pytest.approx(expected, rel=1e-5)
    unsup = run(create_method("kl-dp-unsup"), step(labels=None, teacher_logits=T, frozen_logits=frozen))
    expected_unsup = sum(kl(softmax(f.tolist()), softmax(s.tolist())) for f, s in zip(frozen, S)) / 2  # frozen wins
    assert total(unsup) == pytest.approx(expected_unsup, rel=1e-5)


def test_mcl_loss_and_negative_flip_dropping() -> None:
    log_p = [[math.log(v) for v in softmax(sr)] for sr in S.tolist()]
    kls = [kl(softmax(tr), softmax(sr)) for tr, sr in zip(T.tolist(), S.tolist())]
    xe = -(log_p[0][0] + log_p[1][2]) / 2
    method = create_method("xekl-mcl", {"lam": 0.7})
    assert total(run(method, step(teacher_logits=T))) == pytest.approx(0.7 * sum(kls) / 2 + 0.3 * xe, rel=1e-5)
    # row 1 (label 2): teacher predicts 1 (wrong), frozen predicts 2 (right) -> a negative flip, dropped from KL
    frozen = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    dropping = create_method("xekl-mcl", {"lam": 0.7, "drop_negative_flips": "true"})
    assert FROZEN_LOGITS in dropping.needs
    got = total(run(dropping, step(teacher_logits=T, frozen_logits=frozen)))
    assert got == pytest.approx(0.7 * kls[0] / 2 + 0.3 * xe, rel=1e-5)


def test_mcl_slow_weight_update() -> None:
    fast = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    slow = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for module, value in ((fast, 1.0), (slow, 3.0)):
            for p in module.parameters():
                p.fill_(value)
        fast[1].num_batches_tracked.fill_(7)
    interpolate_weights(slow, fast, tau=0.75)
    assert torch.allclose(slow[0].weight, torch.full((2, 2), 0.75 * 3.0 + 0.25 * 1.0))
    assert torch.allclose(slow[1].running_var, torch.ones(2))  # both 1: unchanged
    assert slow[1].num_batches_tracked.item() == 7  # integer buffers are copied

    method = create_method("xekl-mcl", {"tau": 0.5, "every": 2})
    method.slow = slow
    snapshot = slow[0].weight.clone()
    method.after_step(fast, 0)  # step 1 of 2: no update
    assert torch.equal(slow[0].weight, snapshot)
    method.after_step(fast, 1)
    assert torch.allclose(slow[0].weight, 0.5 * snapshot + 0.5)
    assert method.result(fast) is slow


def test_contrastive_losses() -> None:
    fs = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    ft = torch.tensor([[1.0, 1.0], [0.0, 1.0], [3.0, 0.0]])

    def sims(f: list[list[float]]) -> list[list[float]]:
        n = [[v / math.hypot(*row) for v in row] for row in f]
        return [[sum(a * b for a, b in zip(r, c)) for c in n] for r in n]

    expected = sum(kl(softmax(rt), softmax(rs)) for rt, rs in zip(sims(ft.tolist()), sims(fs.tolist()))) / 3
    assert similarity_kl(fs, ft).item() == pytest.approx(expected, rel=1e-5)
    cd = create_method("cd", {"lam": 0.5})
    s = Step(S[:2].clone().requires_grad_(), {TEACHER_FEATURES: ft[:2]}, torch.arange(2), torch.Generator(), Y,
             student_features=fs[:2])
    log_p = [[math.log(v) for v in softmax(sr)] for sr in S.tolist()]
    assert total(cd(s)) == pytest.approx(0.5 * similarity_kl(fs[:2], ft[:2]).item()
                                         - 0.5 * (log_p[0][0] + log_p[1][2]) / 2, rel=1e-5)

    # CRD's NCE loss, one anchor, memory of N=4, candidates [positive 1, negatives 0, 3] (K=2)
    anchor = torch.tensor([[0.6, 0.8]])
    memory = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    nce_t, log_z = 0.5, torch.tensor(0.3)
    pn = 2 / 4

    def h(m: list[float]) -> float:
        return math.exp(sum(a * b for a, b in zip(anchor[0].tolist(), m)) / nce_t - 0.3)

    expected_nce = -(math.log(h(memory[1].tolist()) / (h(memory[1].tolist()) + pn))
                     + sum(math.log(pn / (h(memory[j].tolist()) + pn)) for j in (0, 3)))
    got = nce_loss(anchor, memory, torch.tensor([[1, 0, 3]]), nce_t, log_z).item()
    assert got == pytest.approx(expected_nce, rel=1e-5)



@pytest.mark.parametrize("t", [1.0, 2.0])
def test_prepared_soft_kl_matches_kl_in_value_and_gradient(t: float) -> None:
    from gkt.transfer.base import kl_loss, kl_loss_soft, soft_targets

    student = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a, b = student.clone().requires_grad_(), student.clone().requires_grad_()
    reference, fused = kl_loss(a, teacher, t), kl_loss_soft(b, soft_targets(teacher, t), t)
    reference.backward()
    fused.backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    assert b.grad.dtype == torch.float64 and torch.allclose(a.grad, b.grad, atol=1e-6)
