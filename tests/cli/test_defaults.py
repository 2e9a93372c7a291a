"""Defaults live in the config dataclasses only: every CLI option that sets a config field defaults to
that field's value; and no argparse Namespace travels below ``gkt.cli``."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import gkt
from gkt.cli import build_parser
from gkt.cli.config import verb_parsers


def _configs() -> list[tuple[str, Any, str]]:
    """(verb, config instance, option prefix): the options ``PREFIX + field`` of the verb set that field."""
    from gkt.adapt.domains import DomainFinetune
    from gkt.adapt.heads import AdaptConfig
    from gkt.engine.loop import Runtime
    from gkt.experiments.kdep_benchmark import BenchmarkConfig
    from gkt.kdep.objectives import ObjectiveConfig
    from gkt.transfer import TransferConfig

    bench = BenchmarkConfig()
    return [("transfer", TransferConfig(), ""), ("transfer", Runtime(), ""), ("study", Runtime(), ""),
            ("kdep pretrain", ObjectiveConfig(), ""), ("kdep pretrain", bench.pretrain_recipe, ""),
            ("kdep finetune", bench.finetune_recipe, ""), ("kdep benchmark", bench, ""),
            ("kdep benchmark", bench.objective, ""), ("kdep benchmark", bench.pretrain_recipe, "pretrain_"),
            ("kdep benchmark", bench.finetune_recipe, "finetune_"), ("adapt", AdaptConfig().finetune, "ft_"), ("crossdomain", DomainFinetune(), "ft_"),
            ("crossdomain", DomainFinetune().recipe, "ft_")]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_cli_defaults_are_the_dataclass_defaults() -> None:
    parsers = verb_parsers(build_parser())
    checked, wrong = 0, []
    for verb, config, prefix in _configs():
        options = {a.dest: a for a in parsers[verb]._actions}
        for f in dataclasses.fields(config):
            action = options.get(prefix + f.name)
            if action is None or action.default is None or f.name == "seed":  # None: "the config's default"
                continue
            checked += 1
            if _plain(action.default) != _plain(getattr(config, f.name)):
                wrong.append(f"{verb} --{action.dest}: {action.default!r} != {type(config).__name__}.{f.name} = "
                             f"{getattr(config, f.name)!r}")
    assert wrong == []
    assert checked >= 30  # the table above really covers the options


def test_options_without_a_default_name_the_config_value() -> None:
    """Options left ``None`` (so that a resumed run or the grid can tell "not given") show the config's value."""
    from gkt.adapt.heads import AdaptConfig
    from gkt.transfer import TransferConfig

    parsers = verb_parsers(build_parser())
    helps = {(verb, a.dest): a.help for verb in ("transfer", "adapt") for a in parsers[verb]._actions}
    assert f"default: {TransferConfig().epochs}" in helps["transfer", "epochs"]
    assert f"default: {' '.join(f'{v:g}' for v in AdaptConfig().l2)}" in helps["adapt", "l2"]
    assert f"default: {TransferConfig().batch_size}" in helps["adapt", "batch_size"]


def test_no_argparse_below_the_cli() -> None:
    source = Path(gkt.__file__).parent
    found = []
    for path in sorted(source.rglob("*.py")):
        if path.relative_to(source).parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            imported = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                        [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            named = isinstance(node, ast.Attribute) and node.attr == "Namespace"
            if named or any(m.split(".")[0] == "argparse" for m in imported):
                found.append(f"{path.relative_to(source)}:{node.lineno}")
    assert found == []


def test_config_options_are_typed_like_their_field() -> None:
    import argparse
    from dataclasses import dataclass

    from gkt.cli.config import add_config_option

    @dataclass(frozen=True)
    class Options:
        lr: float = 0.5
        augment: tuple[str, ...] = ("flip",)
        workers: int | None = None

    p = argparse.ArgumentParser()
    add_config_option(p, "--lr", Options(), help="step")
    add_config_option(p, "--augment", Options())
    add_config_option(p, "--workers", Options(), type=int, help="None: one per CPU")
    args = p.parse_args(["--lr", "0.25", "--workers", "3"])
    assert (args.lr, args.augment, args.workers) == (0.25, ["flip"], 3)
    assert p.parse_args([]).workers is None
    assert "step (default: 0.5)" in p.format_help() and "(default: flip)" in p.format_help()
    with pytest.raises(TypeError, match="give type="):
        add_config_option(argparse.ArgumentParser(), "--workers", Options())
    transfer = verb_parsers(build_parser())["transfer"]
    assert transfer.parse_args(["--loader-workers", "2"]).loader_workers == 2


def test_model_options_name_every_model_source_and_every_option_has_help() -> None:
    from gkt.models.specs import SPEC_SOURCES

    parsers = verb_parsers(build_parser())
    model_options = {"models", "model", "student", "students", "teacher", "teachers", "zoo"}
    # zoo names only; a subset of --models; the exportable (library) sources only
    exempt = {("demo", "models"), ("adapt", "students"), ("export", "model")}
    checked, wrong = 0, []
    for verb, parser in parsers.items():
        for action in parser._actions:
            if action.dest == "help":
                continue
            if not action.help:
                wrong.append(f"{verb} {action.option_strings or action.dest}: no help")
            elif action.dest in model_options and (verb, action.dest) not in exempt:
                checked += 1
                wrong += [f"{verb} --{action.dest}: {name}: missing" for name in SPEC_SOURCES
                          if f"{name}:" not in action.help]
    assert wrong == []
    assert checked >= 15
