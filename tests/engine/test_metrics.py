import torch

from gkt.engine.metrics import flip_stats, knowledge_gain_loss, pairwise_class_flips, pairwise_flips


def test_pairwise_flips_by_hand() -> None:
    # 3 models x 4 samples
    correct = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    pos, neg = pairwise_flips(correct)
    assert pos[0, 1] == 0.25 and pos[1, 0] == 0.25  # sample 1 / sample 2
    assert pos[0, 2] == 0.5 and pos[2, 0] == 0.0
    assert torch.all(pos.diagonal() == 0) and torch.equal(neg, pos.T)
    stats = flip_stats(correct[0], correct[2])
    assert (stats.rho_pos, stats.rho_neg, stats.delta_acc) == (0.5, 0.0, 0.5)


def test_class_flips_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    correct = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    per_class = pairwise_class_flips(correct, labels, 3)
    assert per_class[0, 1].tolist() == [0.5, 0.5, 0.0]  # class 0: sample 0 of 2; class 1: sample 2 of 2
    assert per_class[1, 0].tolist() == [0.0, 0.0, 0.0]
    # class-weighted mean of per-class flips equals the overall rate
    counts = torch.bincount(labels, minlength=3).double()
    assert (per_class[0, 1] * counts).sum() / 4 == pairwise_flips(correct)[0][0, 1]


def test_gain_loss() -> None:
    before = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    after = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    assert knowledge_gain_loss(before, after) == (0.5, 0.25)
