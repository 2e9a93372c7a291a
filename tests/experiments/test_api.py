"""The Python API at gkt's top level gives the CLI's files and numbers: the same options through
``gkt.cli.main`` and through ``gkt.analyze`` / ``gkt.transfer`` / ``gkt.study`` / ``gkt.export``; and
``gkt.transfer`` stays callable whether or not a ``gkt.transfer.x`` module was imported first."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gkt
from gkt.cli import main
from gkt.core.errors import GktError
from tests.cli.test_image_data_cli import hf_dir, rgb_model
from tests.hubs import HubCaches, image_folder

CLASSES = ("cat", "dog", "owl")


def flags(options: dict[str, object]) -> list[str]:
    """``{"batch_size": 4, "no_figures": True}`` as ``--batch-size 4 --no-figures``."""
    out: list[str] = []
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        out += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return out


def only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture
def folder(tmp_path: Path) -> str:
    image_folder(tmp_path / "pets" / "train", CLASSES, per_class=4)
    image_folder(tmp_path / "pets" / "val", CLASSES, per_class=3, seed=1)
    return f"folder:{tmp_path / 'pets'}"


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[str, str]:
    return rgb_model(tmp_path / "a", 0, list(CLASSES)), rgb_model(tmp_path / "b", 1, list(CLASSES))


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Call it between the CLI and the API run: a new $GKT_HOME, so no stored prediction or output is reused."""
    return lambda: monkeypatch.setenv("GKT_HOME", str(tmp_path / "home-api"))


SCRIPT = """
import sys
import gkt
assert "torch" not in sys.modules, "import gkt imported torch"
assert {"load_model", "load_data", "analyze", "transfer", "study", "export", "improve", "mutual"} <= set(gkt.__all__)
if sys.argv[1] == "submodule-first":
    from gkt.transfer.kl import KLDist
    first = gkt.transfer
else:
    first = gkt.transfer
    from gkt.transfer.kl import KLDist
from gkt.experiments.transfer_run import transfer
assert gkt.transfer is first and callable(gkt.transfer) and gkt.transfer.TransferConfig
assert gkt.transfer.__call_function__() is transfer
try:
    gkt.transfer(student="zoo:mlp")  # reaches the function: it names the missing argument
except TypeError as exc:
    assert "teacher" in str(exc), exc
else:
    raise AssertionError("no TypeError")
print("ok")
"""


@pytest.mark.parametrize("order", ["submodule-first", "call-first"])
def test_gkt_transfer_is_callable_in_either_import_order(order: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, order], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_load_data_and_load_model_read_as_the_cli(folder: str, two_models: tuple[str, str]) -> None:
    train = gkt.load_data(folder)
    assert len(train) == 12 and train.class_names == list(CLASSES)  # a shipped val/ keeps train whole
    assert len(gkt.load_data(folder, "test")) == 9  # the shipped val/ is the held-out split
    assert len(gkt.load_data(folder, fraction=0.5, seed=0)) == 6
    model = gkt.load_model(two_models[0], data=folder, class_map={"cat": "dog", "dog": "cat", "owl": "owl"})
    assert model.class_names == list(CLASSES) and model.num_classes == 3
    with pytest.raises(GktError, match="give the dataset"):
        gkt.load_model(two_models[0], class_map={"cat": "dog"})
    with pytest.raises(GktError, match="choose how to combine them with --multi"):
        gkt.transfer(student=two_models[0], teacher=list(two_models), data=folder)  # several teachers need a mode


def test_analyze_gives_the_cli_files(tmp_path: Path, folder: str, two_models: tuple[str, str], fresh_home) -> None:
    options = {"data": folder, "split": "test", "student": two_models[1], "batch_size": 4, "no_semantic": True,
               "seed": 2}
    assert main(["analyze", "--models", two_models[0], *flags(options), "--out", str(tmp_path / "cli")]) == 0
    fresh_home()
    result = gkt.analyze([two_models[0]], **options, out=tmp_path / "api", say=lambda _: None)
    cli = only_run(tmp_path / "cli")
    assert result.run_dir == only_run(tmp_path / "api") and result.gains["student"] == "b"
    names = sorted(p.name for p in result.run_dir.iterdir())
    assert {"summary.json", "gains.json", "pairs.csv", "rho_pos.csv", "random_baseline.csv", "figures"} <= set(names)
    for name in names:
        if name.endswith((".csv", ".json")):
            assert (result.run_dir / name).read_text() == (cli / name).read_text(), name
    assert json.dumps(result.summary) == json.dumps(json.loads((cli / "summary.json").read_text()))  # NaN too
    assert sorted(p.name for p in result.figures) == sorted(p.name for p in (cli / "figures").iterdir())


@pytest.mark.parametrize("where", ["folder", "hf"])
def test_transfer_gives_the_cli_final_json(tmp_path: Path, folder: str, two_models: tuple[str, str], where: str,
                                          fresh_home) -> None:
    data = folder if where == "folder" else f"hf:{hf_dir(tmp_path / 'hfds')}"
    options = {"student": two_models[0], "teacher": two_models[1], "data": data, "method": "kl-dp",
               "fraction": 0.75, "epochs": 2, "batch_size": 4, "lr": 0.05, "seed": 3}
    assert main(["transfer", *flags(options), "--out", str(tmp_path / "cli")]) == 0
    fresh_home()
    outcome = gkt.transfer(**options, out=tmp_path / "api", say=lambda _: None)
    cli, api = only_run(tmp_path / "cli"), only_run(tmp_path / "api")
    final = json.loads((cli / "final.json").read_text())
    assert json.loads((api / "final.json").read_text()) == json.loads(json.dumps(outcome.final))
    assert final["checkpoint"] != outcome.final["checkpoint"]  # each run's own student; every number the same:
    same = {"checkpoint": "", "seconds": 0}
    assert "seconds" in final and json.dumps({**outcome.final, **same}) == json.dumps({**final, **same})
    assert rows(api / "metrics.csv") == rows(cli / "metrics.csv") and len(rows(cli / "metrics.csv")) == 3


def rows(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows without their timing column."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_study_gives_the_cli_tables(tmp_path: Path, folder: str, two_models: tuple[str, str], fresh_home) -> None:
    options = {"students": list(two_models), "methods": ["kl"], "data": folder, "fraction": 1.0, "epochs": 1,
               "batch_size": 4, "grid": ["lr=0.01,0.1"]}
    assert main(["study", *flags(options), "--out", str(tmp_path / "cli")]) == 0
    fresh_home()
    result = gkt.study(**options, out=tmp_path / "api")
    cli = only_run(tmp_path / "cli")
    assert result.counts.done == 4 and result.counts.ok and result.store_path == result.run_dir / "results.sqlite"
    for name in ("success_table.csv", "jobs.json", "data.json", "models.json", "findings.json"):
        assert (result.run_dir / name).read_text() == (cli / name).read_text(), name
    assert rows(result.run_dir / "pairs.csv") == rows(cli / "pairs.csv") and len(rows(cli / "pairs.csv")) == 4
    assert [row["method"] for row in result.table] == ["kl"]
    with pytest.raises(GktError, match="you gave --methods"):
        gkt.study(methods=["ce"], resume=result.run_dir, out=tmp_path / "api")


def test_export_gives_the_cli_files(offline_hubs: HubCaches, tmp_path: Path) -> None:
    spec = "timm:test_resnet.r160_in1k"
    assert main(["export", spec, "--to", str(tmp_path / "cli"), "--out", str(tmp_path / "runs")]) == 0
    result = gkt.export(spec, to=tmp_path / "api")
    assert (result.format, result.path, result.num_classes) == ("timm", tmp_path / "api", 1000)
    names = sorted(p.name for p in result.path.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cli").iterdir()) and "model.safetensors" in names
    for name in names:
        assert (result.path / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    default = gkt.export(spec, out=tmp_path / "runs2")  # RUN_DIR/model, as the CLI without --to
    assert default.path.name == "model" and default.path.parent.parent == tmp_path / "runs2"
    hub = gkt.load_model(spec, data=f"folder:{offline_hubs.folder.parent}", class_map=offline_hubs.class_map)
    assert hub.num_classes == 10  # a 1000-class hub model aligned to the folder's classes by the class map
