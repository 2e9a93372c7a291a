from __future__ import annotations

import json
from pathlib import Path

import pytest

from gkt.cli import main


def test_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "zoo" in capsys.readouterr().out


def test_zoo_build_and_list_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--zoo-dir", str(tmp_path / "zoo"), "--out", str(tmp_path / "runs"), "--threads", "2"]
    code = main(["zoo", "build", "--only", "linear", "mlp", "--epochs", "1", "--fraction", "0.02", *common])
    if code == 2:
        pytest.skip("Fashion-MNIST not installed")
    out = capsys.readouterr().out
    assert code == 0 and "linear" in out and "2 trained" in out
    run_dirs = sorted((tmp_path / "runs").iterdir())
    config = json.loads((run_dirs[0] / "config.json").read_text())
    assert config["command"] == "zoo build" and config["seed"] == 0
    assert (run_dirs[0] / "zoo.csv").read_text().startswith("name,family,params,test_acc")
    assert main(["zoo", "build", "--only", "linear", "--epochs", "1", "--fraction", "0.02", *common]) == 0
    assert "1 cached" in capsys.readouterr().out


def test_errors_are_clean(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["zoo", "build", "--only", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gkt: error: no zoo model 'nope'") and "Traceback" not in err
    assert main(["zoo", "list", "--zoo-dir", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 1
    assert main(["zoo", "build", "--device", "cuda:7", "--out", str(tmp_path)]) == 2 or __import__("torch").cuda.is_available()
