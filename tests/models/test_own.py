"""A user's own ``nn.Module`` in the Python API: wrapped with its preprocessing and class names, used by a
transfer, saved, and reloaded into a fresh instance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gkt.core.errors import GktError
from gkt.models import Preprocess, load_model, load_module_checkpoint, save_checkpoint, wrap_module
from gkt.transfer import TransferConfig, run_transfer
from tests.conftest import make_blobs, make_model


class TinyNet(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class OtherNet(TinyNet):
    pass


def test_own_module_wraps_transfers_saves_and_reloads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, test = make_blobs(16, size=12, seed=0), make_blobs(8, size=12, seed=1)
    student = wrap_module(TinyNet(), train.class_names, Preprocess(12, 1, (0.3,), (0.3,)))
    x = test.load(torch.arange(4))
    with torch.no_grad():
        assert student(x).shape == (4, 4) and student.features(x).shape == (4, 8)
    outcome = run_transfer(student.requires_grad_(True), make_model("mlp", 1), train, test,
                           TransferConfig(method="kl-dp", epochs=1, lr=0.01, batch_size=16, seed=0),
                           torch.device("cpu"), tmp_path / "run")
    assert outcome is not None
    student.eval()
    path = save_checkpoint(student, tmp_path / "mine")
    again = load_module_checkpoint(path, TinyNet())
    assert again.class_names == student.class_names and again.preprocess == student.preprocess
    with torch.no_grad():
        assert torch.equal(again(x), student(x))
    with pytest.raises(GktError, match="holds a .*TinyNet, not a .*OtherNet"):
        load_module_checkpoint(path, OtherNet())
    with pytest.raises(GktError, match="never imports code a file names.*load_module_checkpoint"):
        load_model(f"file:{path}")
    with pytest.raises(GktError, match="takes a torch nn.Module"):
        wrap_module(lambda x: x, ["a"], Preprocess(12, 1, (0.3,), (0.3,)))  # type: ignore[arg-type]
