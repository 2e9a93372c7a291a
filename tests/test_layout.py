"""The package layering: imports only go down (core < data < models < engine < methods < reporting <
experiments < cli); method packages (transfer, kdep, analysis, adapt) do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import gkt

LAYERS = {"core": 0, "data": 1, "models": 2, "engine": 3, "transfer": 4, "kdep": 4, "analysis": 4, "adapt": 4,
          "reporting": 5, "experiments": 6, "cli": 7}
SOURCE = Path(gkt.__file__).parent


def upward_imports() -> list[str]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).parts
        if len(parts) < 2:
            continue
        package = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gkt."):
                other = node.module.split(".")[1]
                if other in LAYERS and other != package and LAYERS[other] >= LAYERS[package]:
                    found.append(f"{path.relative_to(SOURCE)}:{node.lineno} imports {node.module}")
    return found


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SOURCE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


def test_imports_only_go_down() -> None:
    assert upward_imports() == []
