"""``--recipe``: the paper authors' defaults beside gkt's; a recipe fills in only what the user left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gkt.core.errors import GktError
from gkt.data.augment import AUGMENTATIONS, random_greyscale
from gkt.transfer import TransferConfig, TransferTrainer
from gkt.transfer.kl import KLDist
from gkt.transfer.recipes import RECIPES
from tests.conftest import make_blobs
from tests.transfer.test_cli_transfer import run, write_model
from tests.transfer.test_trainer import tiny_model


def test_recipes_set_what_they_say() -> None:
    gkt = TransferConfig()
    assert (gkt.recipe, gkt.lr, gkt.augment) == ("gkt", RECIPES["gkt"].lr, ())
    paper = TransferConfig(recipe="paper", batch_size=64)
    assert paper.lr == pytest.approx(1e-4 * 64 / 256) and paper.augment == ("paper",)
    assert TransferConfig(recipe="paper", batch_size=512).lr == pytest.approx(2e-4)
    shown = paper.to_dict()
    assert shown["recipe"] == "paper" and shown["lr"] == paper.lr and shown["augment"] == ("paper",)
    assert TransferConfig.from_dict(shown) == paper


def test_an_option_the_user_gave_wins() -> None:
    config = TransferConfig(recipe="paper", lr=0.05, augment=())
    assert config.lr == 0.05 and config.augment == ()
    assert TransferConfig(recipe="paper", augment=("flip",)).augment == ("flip",)
    assert TransferConfig(lr=0.2).lr == 0.2
    with pytest.raises(GktError, match="unknown recipe 'nope'; choose from gkt, paper"):
        TransferConfig(recipe="nope")


def test_the_paper_recipe_recomputes_targets_every_step() -> None:
    """The authors compute the teacher's outputs and the DP mask on every (augmented) batch: no cache, even
    where the augmentation is switched off."""
    data = make_blobs(n_per_class=8, seed=0)
    for recipe, augment, cached in (("gkt", None, True), ("paper", None, False), ("paper", (), False)):
        config = TransferConfig(recipe=recipe, augment=augment, batch_size=8)
        trainer = TransferTrainer(tiny_model(data.class_names, 1), tiny_model(data.class_names, 2), KLDist(), config,
                                  torch.device("cpu"), data)
        assert bool(trainer.task.cached) == cached, recipe


def test_paper_augmentation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    out = AUGMENTATIONS["paper"](x, torch.Generator().manual_seed(1))
    again = AUGMENTATIONS["paper"](x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.equal(out, again) and 0 <= out.min() and out.max() <= 1
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert 0.7 < changed.float().mean() < 1.0 + 1e-9  # flip (1/2) or colour distortion (0.8): ~90% changed
    grey = random_greyscale(x, torch.Generator().manual_seed(2), p=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    single = AUGMENTATIONS["paper"](x[:, :1], torch.Generator().manual_seed(1))  # grey images: flip and light
    assert single.shape == (64, 1, 8, 8)


def test_cli_recipe(tmp_path: Path, tiny_fmnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """``--recipe paper`` with ``--lr`` given: the given rate, the recipe's augmentation; the resolved config
    and final.json say so."""
    student, teacher = write_model(tmp_path / "s", 1), write_model(tmp_path / "t", 2, hidden=8)
    code, run_dir = run(tmp_path, tiny_fmnist_dir, "--student", student, "--teacher", teacher, "--method", "kl-dp",
                        "--epochs", "1", "--recipe", "paper")
    assert code == 0, capsys.readouterr().out
    resolved = json.loads((run_dir / "resolved_config.json").read_text())
    assert resolved["recipe"] == "paper" and resolved["lr"] == 0.05 and resolved["augment"] == ["paper"]
    assert json.loads((run_dir / "final.json").read_text())["config"]["recipe"] == "paper"


def test_help_shows_the_recipes(capsys: pytest.CaptureFixture) -> None:
    from gkt.cli import main

    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--recipe {gkt,paper}" in out and "1e-4·batch/256" in out and "(default: gkt)" in out


def test_a_study_grid_may_vary_the_recipe() -> None:
    from gkt.experiments.transfer_job import check_settings

    check_settings({"recipe": ["gkt", "paper"], "lr": [0.01]})
    with pytest.raises(GktError, match="--grid recipe='nope'"):
        check_settings({"recipe": ["nope"]})
