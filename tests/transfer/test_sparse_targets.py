"""Sampled sparse targets (large label spaces): unbiased in expectation, deterministic per row, exact where
KL+DP's masks look, and read correctly by every method that takes cached frozen outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gkt.core.errors import GktError
from gkt.engine.sparse_targets import SparseTargets, sample_targets
from gkt.transfer import TransferConfig, run_transfer
from gkt.transfer.base import kl_loss_soft, soft_targets
from gkt.transfer.dp import KLDataPartition, KLDataPartitionUnsupervised
from tests.conftest import make_blobs
from tests.transfer.test_trainer import tiny_model

CLASSES = 150


def teacher_and_student(seed: int = 0, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaked but uneven teacher logits (a tail that spreading evenly gets wrong) and student logits."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, CLASSES, generator=g) * 2.5, torch.randn(rows, CLASSES, generator=g)


def sparse(logits: torch.Tensor, temperature: float, seed: int, draws: int = 32,
           rows: torch.Tensor | None = None) -> SparseTargets:
    """What the output cache gives for ``logits`` (rows 0..B-1 unless given), drawn with ``seed``."""
    probs = logits.softmax(-1)
    rows = torch.arange(len(logits)) if rows is None else rows
    t = sample_targets(logits, rows, draws, temperature, seed)
    values, indices = logits.topk(10, -1)
    return SparseTargets(logits.argmax(-1), probs.amax(-1), t["head_prob"], t["sample_indices"].long(),
                         t["sample_counts"].float(), values, indices, None, logits.shape[-1], temperature)


def gradient(student: torch.Tensor, targets: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """d/dz_s of the summed per-sample loss T²·KL (one row's gradient does not depend on the batch size)."""
    z = student.clone().requires_grad_(True)
    (kl_loss_soft(z, targets, temperature) * len(z)).backward()
    return z.grad


def spread_evenly(logits: torch.Tensor, k: int = 10) -> torch.Tensor:
    """The former cache's target: exact log-probabilities on the top-k classes, the rest of the mass spread
    evenly over the other classes."""
    log_p = logits.log_softmax(-1)
    top = log_p.topk(k, -1)
    rest = (1 - top.values.exp().sum(-1, keepdim=True)) / (logits.shape[-1] - k)
    return rest.log().expand_as(log_p).clone().scatter_(-1, top.indices, top.values)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_expected_gradient_is_the_full_kl_gradient(temperature: float) -> None:
    """The Monte-Carlo mean of the sampled-target gradient over seeds is the full KL's gradient, within a
    z-test tolerance that shrinks as 1/sqrt(seeds); the spread-evenly target's gradient is off by more."""
    teacher, student = teacher_and_student()
    full = gradient(student, soft_targets(teacher, temperature), temperature)
    # the gradient is T·(σ(z_s/T) − q): per class, T times the deviation of q from p_T, whose variance over
    # one seed is (1 − h)²·t(1 − t)/K for the tail distribution t (the top-1 h is exact)
    p = (teacher / temperature).softmax(-1)
    head = p.amax(-1, keepdim=True)
    tail = p.scatter(-1, p.argmax(-1, keepdim=True), 0.0) / (1 - head)
    variance, draws = (1 - head) ** 2 * tail * (1 - tail) / 32, 32
    errors = {}
    for seeds in (16, 400):
        # `seeds` independent draws of each row in one call: copies at distinct rows of the hashed uniforms
        drawn = sparse(teacher.repeat(seeds, 1), temperature, 0, rows=torch.arange(seeds * len(teacher)))
        grads = gradient(student.repeat(seeds, 1), soft_targets(drawn, temperature), temperature)
        grads = grads.view(seeds, *student.shape)
        error = (grads.mean(0) - full).abs()
        # 5 standard errors, plus 3 single draws (rare classes are Poisson, not normal), plus rounding
        tolerance = temperature * (5 * (variance / seeds).sqrt() + 3 * (1 - head) / (draws * seeds)) + 1e-6
        assert (error <= tolerance).all(), (error - tolerance).max()
        errors[seeds] = error.max().item()
    assert errors[400] < errors[16]
    if temperature == 1.0:  # the former target (it was tempered again by the loss, so compare at T = 1)
        biased = gradient(student, soft_targets(spread_evenly(teacher), temperature), temperature)
        outside = (biased - full).abs() > tolerance  # the same test fails: a bias no number of seeds removes
        assert outside.float().mean() > 0.25, outside.float().mean()


def test_draws_depend_on_the_row_not_the_batch() -> None:
    teacher, _ = teacher_and_student(rows=10)
    whole = sample_targets(teacher, torch.arange(10))
    part = sample_targets(teacher[[3, 7]], torch.tensor([3, 7]))
    assert all(torch.equal(whole[k][[3, 7]], part[k]) for k in whole)
    again = sample_targets(teacher, torch.arange(10))
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    other = sample_targets(teacher, torch.arange(10), seed=1)
    assert not torch.equal(whole["sample_indices"], other["sample_indices"])
    assert (whole["sample_counts"].long().sum(1) == 32).all()
    assert not (whole["sample_indices"] == teacher.argmax(1, keepdim=True))[whole["sample_counts"] > 0].any()


def test_dp_masks_use_exact_confidences() -> None:
    """KL+DP's masks on sparse targets equal those on the full logits (true-class and maximum
    probabilities are stored exactly), and the selected target is the winner's sampled one."""
    (teacher, _), (frozen, _) = teacher_and_student(0, rows=64), teacher_and_student(1, rows=64)
    labels = torch.randint(0, CLASSES, (64,), generator=torch.Generator().manual_seed(3))
    labels[:20] = teacher[:20].argmax(1)

    def with_true(x: torch.Tensor) -> SparseTargets:
        s = sparse(x, 1.0, 0)
        return SparseTargets(s.predicted, s.max_prob, s.head_prob, s.sample_indices, s.sample_counts, s.topk_logits,
                             s.topk_indices, x.softmax(-1).gather(1, labels[:, None]).squeeze(1), CLASSES, 1.0)

    for method in (KLDataPartition(), KLDataPartitionUnsupervised()):
        mask = method.teacher_mask(with_true(teacher), with_true(frozen), labels)
        assert torch.equal(mask, method.teacher_mask(teacher, frozen, labels))
        assert 0 < mask.sum() < len(mask)
    prepared = KLDataPartition().prepare_targets({"teacher_logits": with_true(teacher),
                                                  "frozen_logits": with_true(frozen)}, labels)
    mask = KLDataPartition().teacher_mask(teacher, frozen, labels)
    expected = soft_targets(SparseTargets.where(mask, with_true(teacher), with_true(frozen)), 1.0)
    assert all(torch.equal(prepared[k], expected[k]) for k in expected)


def test_sparse_targets_refuse_another_temperature() -> None:
    teacher, student = teacher_and_student()
    with pytest.raises(GktError, match="temperature 1"):
        soft_targets(sparse(teacher, 1.0, 0), 2.0)
    kl = kl_loss_soft(student, soft_targets(sparse(teacher, 2.0, 0), 2.0), 2.0)
    assert torch.isfinite(kl) and kl > 0


@pytest.mark.parametrize("method,args", [("kl-dp", {}), ("kl-dp-unsup", {}), ("ce-soft", {}), ("kl-topk", {"k": 5}),
                                         ("xekl-mcl", {"drop_negative_flips": "true"})])
def test_cached_large_label_space_runs(method: str, args: dict) -> None:
    """Every method reading cached frozen outputs trains on sparse targets (121 classes, T = 2), and the
    same run again gives the same weights (the draws are stored, and deterministic)."""
    data, test = make_blobs(n_per_class=1, num_classes=121, seed=0), make_blobs(n_per_class=1, num_classes=121, seed=1)
    config = TransferConfig(method=method, method_args=args, epochs=1, lr=0.05, batch_size=32, seed=0, temperature=2.0)
    weights = []
    for _ in range(2):
        student, teacher = tiny_model(data.class_names, 1), tiny_model(data.class_names, 2, hidden=8)
        outcome = run_transfer(student, teacher, data, test, config, torch.device("cpu"))
        assert outcome.final["status"] == "ok" and torch.isfinite(torch.tensor(outcome.final["train_loss"]))
        weights.append(outcome.model.net.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    before = tiny_model(data.class_names, 1).net.state_dict()
    assert any(not torch.equal(before[k], weights[0][k]) for k in before)


def test_kl_topk_beyond_the_stored_top_k_is_refused() -> None:
    data, test = make_blobs(n_per_class=1, num_classes=121, seed=0), make_blobs(n_per_class=1, num_classes=121, seed=1)
    config = TransferConfig(method="kl-topk", method_args={"k": 20}, epochs=1, batch_size=32)
    with pytest.raises(GktError, match="top 10 logits"):
        run_transfer(tiny_model(data.class_names, 1), tiny_model(data.class_names, 2), data, test, config,
                     torch.device("cpu"))


def test_sparse_kl_value_is_the_kl_of_its_target() -> None:
    teacher, student = teacher_and_student()
    s = sparse(teacher, 1.0, 5)
    indices, probs = s.target()
    q = torch.zeros(len(teacher), CLASSES).scatter_add_(1, indices, probs)
    expected = F.kl_div(student.log_softmax(-1), q, reduction="batchmean")
    assert kl_loss_soft(student, soft_targets(s, 1.0), 1.0) == pytest.approx(expected.item(), rel=1e-5)


def test_multi_teacher_and_mutual_read_sparse_targets() -> None:
    """K-teacher KL+DP stacks the teachers' sparse targets; mutual transfer mixes its peers' logits with its
    frozen copy's sparse targets per sample."""
    from gkt.transfer.mutual import MutualConfig, run_mutual

    data, test = make_blobs(n_per_class=1, num_classes=121, seed=0), make_blobs(n_per_class=1, num_classes=121, seed=1)
    names = data.class_names
    config = TransferConfig(method="kl-dp-multi", epochs=1, lr=0.05, batch_size=32)
    outcome = run_transfer(tiny_model(names, 1), [tiny_model(names, 2), tiny_model(names, 3)], data, test, config,
                           torch.device("cpu"))
    assert outcome.final["status"] == "ok"
    mutual = run_mutual([tiny_model(names, 1), tiny_model(names, 2)], data, test,
                        MutualConfig(epochs=1, batch_size=32, temperature=2.0), torch.device("cpu"))
    assert all(torch.isfinite(torch.tensor(row["acc"])) for row in mutual.rows)
