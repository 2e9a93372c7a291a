"""Run configs: YAML options validated by models built from argparse, CLI overrides, the resolved
config.yaml of every run and its exact re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import COMPARED, fmnist_dir, new_runs, write_model

from gkt.cli import build_parser, main
from gkt.cli.config import config_model, parse_args, validate_config, verb_parsers
from gkt.core.errors import GktError


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("values, message", [
    ({"lr": "fast"}, "transfer config: field 'lr': input should be a valid number"),
    ({"lr": "fast"}, "got 'fast'"),
    ({"colour": "red", "lr": 0.1}, "unknown field(s) colour; accepted: augment, augment_epochs, bad_images, batch_size, "),
    ({"order": "random"}, "field 'order': input should be 'given', 'asc' or 'desc', got 'random'"),
    ({"epochs": 2.5}, "field 'epochs': input should be a valid integer"),
    ({"augment": [1, {"a": 2}]}, "field 'augment.1': input should be a valid string"),
])
def test_bad_fields_are_named(tmp_path: Path, values: dict, message: str, capsys: pytest.CaptureFixture) -> None:
    config = write_yaml(tmp_path / "c.yaml", values)
    assert main(["transfer", "--config", str(config), "--out", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_required_options_file_errors_and_command_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = write_yaml(tmp_path / "empty.yaml", {"split": "val"})
    assert main(["analyze", "--config", str(empty)]) == 2
    assert "analyze config: field 'models': field required" in capsys.readouterr().err
    other = write_yaml(tmp_path / "study.yaml", {"command": "study", "students": ["zoo:a"]})
    assert main(["transfer", "--config", str(other)]) == 2
    assert "is a `gkt study` config, not `gkt transfer`" in capsys.readouterr().err
    assert main(["transfer", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["transfer", "--config", str(tmp_path / "list.yaml")]) == 2
    assert "expected a mapping" in capsys.readouterr().err


def test_file_values_typed_and_flags_override(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"lr": "1e-2", "weight-decay": 0, "teacher": "zoo:cnn", "epochs": 3,
                                              "augment": "flip", "unlabelled": True, "method_arg": ["lam=0.7"]})
    args = parse_args(build_parser(), ["transfer", "--config", str(config), "--epochs", "4", "--method-arg", "lam=0.5"])
    assert args.lr == 0.01 and args.weight_decay == 0.0 and args.epochs == 4 and args.unlabelled is True
    assert args.teacher == ["zoo:cnn"] and args.augment == ["flip"]  # scalars become lists for list options
    assert args.method_arg == ["lam=0.5"]  # a repeated flag replaces the file's list, it does not extend it
    assert args.method == "kl-dp" and args.batch_size == 128 and args.command == "transfer"  # argparse defaults
    args = parse_args(build_parser(), ["transfer", "--config", str(config), "--teacher", "zoo:vit"])
    assert args.teacher == ["zoo:vit"]


def test_every_verb_has_a_model_with_argparse_defaults() -> None:
    parser = build_parser()
    for command, sub in verb_parsers(parser).items():
        model = config_model(sub, command)
        required = [name for name, f in model.model_fields.items() if f.is_required()]
        if required:
            with pytest.raises(GktError, match="field required"):
                validate_config(sub, command, {})
            continue
        argv = command.split()
        parsed = {k: v for k, v in vars(parser.parse_args(argv)).items() if k in model.model_fields}
        assert validate_config(sub, command, {}) == parsed, command


def test_resolved_config_reruns_the_same_transfer(tmp_path: Path) -> None:
    data = fmnist_dir(tmp_path / "fmnist", 60)
    student, teacher = write_model(tmp_path / "student", 1), write_model(tmp_path / "teacher", 2, hidden=8)
    out = tmp_path / "runs"
    settings = write_yaml(tmp_path / "transfer.yaml", {
        "student": student, "teacher": [teacher], "data-dir": str(data), "fraction": 1.0, "batch_size": 8,
        "lr": 0.05, "epochs": 2, "augment": ["flip"], "method": "xekl-mcl", "threads": 1, "out": str(out)})
    assert main(["transfer", "--config", str(settings), "--seed", "3"]) == 0
    (first,) = new_runs(out, set())
    resolved = yaml.safe_load((first / "config.yaml").read_text())
    assert resolved["command"] == "transfer" and resolved["seed"] == 3 and resolved["method"] == "xekl-mcl"
    assert resolved["temperature"] == 1.0 and resolved["weight_decay"] == 1e-3  # defaults are written too
    assert "config" not in resolved and json.loads((first / "config.json").read_text())["seed"] == 3
    assert main(["transfer", "--config", str(first / "config.yaml")]) == 0
    (second,) = new_runs(out, {first})
    a, b = (json.loads((run / "final.json").read_text()) for run in (first, second))
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    assert (first / "student.safetensors").read_bytes() == (second / "student.safetensors").read_bytes()
    assert yaml.safe_load((second / "config.yaml").read_text()) == resolved
