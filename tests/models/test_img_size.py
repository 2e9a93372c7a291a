"""``--img-size``: one input size for every library model of a command (a spec's own ``?img_size`` wins);
a zoo:/file: model, fixed at its training size, refuses a different one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gkt.cli import main
from gkt.core.errors import GktError
from gkt.models import load_model
from gkt.models.specs import img_size_default
from tests.conftest import write_model
from tests.hubs import TORCHVISION_MODEL, HubCaches

TV_SPEC = f"torchvision:{TORCHVISION_MODEL[0]}?weights={TORCHVISION_MODEL[1]}"


def test_img_size_reaches_library_models_and_keeps_crop_pct(offline_hubs: HubCaches) -> None:
    plain = load_model(TV_SPEC).preprocess
    with img_size_default(160):
        scaled = load_model(TV_SPEC).preprocess
        own = load_model(f"{TV_SPEC}&img_size=192").preprocess  # the spec's own option wins
    assert (plain.input_size, plain.view.resize) == (224, 256)
    assert (scaled.input_size, scaled.view.resize) == (160, 182)  # floor(160 / 0.875)
    assert own.input_size == 192 and load_model(TV_SPEC).preprocess == plain  # the default is back


def test_img_size_refuses_fixed_size_models(tmp_path: Path) -> None:
    spec = write_model(tmp_path / "m", 0)
    with img_size_default(14):
        assert load_model(spec).preprocess.input_size == 14
    with img_size_default(32), pytest.raises(GktError, match="img-size 32 does not apply"):
        load_model(spec)


def test_cli_img_size_is_checked_and_reaches_the_verb(tmp_path: Path, tiny_fmnist_dir: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    specs = [write_model(tmp_path / f"m{i}", i) for i in range(2)]
    common = ["analyze", "--models", *specs, "--data-dir", str(tiny_fmnist_dir), "--out", str(tmp_path / "runs"),
              "--no-semantic"]
    for bad in ("0", "5000"):  # argparse refuses it: exit 2 with the allowed range
        with pytest.raises(SystemExit) as exit_info:
            main([*common, "--img-size", bad])
        assert exit_info.value.code == 2 and "from 1 to 4096" in capsys.readouterr().err
    assert main([*common, "--img-size", "32"]) == 2
    assert "--img-size 32 does not apply" in capsys.readouterr().err
