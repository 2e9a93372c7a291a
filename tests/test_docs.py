"""The documentation cannot drift from the code and the measurements: every measured table is generated from
results/ (``results/render.py --check``), the methods table lists the registry, and every import and dotted
name it shows resolves."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from gkt.transfer import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


@pytest.fixture(scope="module")
def render():
    spec = importlib.util.spec_from_file_location("results_render", ROOT / "results" / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_measured_tables_match_their_csv(render) -> None:
    assert render.main(["--check"]) == 0, "run: uv run --frozen --no-sync python results/render.py"


def test_render_replaces_a_stale_block_and_keeps_a_fresh_one(render) -> None:
    fresh = f"x\n<!-- results:demo -->\n{render.TABLES['demo'].render()}<!-- /results:demo -->\ny\n"
    stale = fresh.replace("| `kl-dp` | ", "| `kl-dp` | 99.9 | ", 1)
    assert stale != fresh
    assert render.render_text(stale) == fresh
    assert render.render_text(fresh) == fresh


def test_fill_uses_the_first_complete_alternative(render) -> None:
    row = {"a": "-0.125", "b": "", "name": "fmnist[5-9]"}
    assert render.fill("{a:+.2f} ± {b:.2f}||{a:+.2f} (1 seed)", row) == "−0.12 (1 seed)"
    assert render.fill("{b:.2f}", row) == "–"
    assert render.fill("{name}", row) == "fmnist[5-9]"  # text fields are not read as numbers


def test_every_table_is_shown_and_every_study_documented(render) -> None:
    texts = "".join(p.read_text() for p in render.documents())
    assert [name for name in render.TABLES if f"<!-- results:{name} -->" not in texts] == []
    for folder in sorted(p for p in (ROOT / "results").iterdir() if p.is_dir() and p.name != "__pycache__"):
        notes = (folder / "README.md").read_text()
        assert list(folder.glob("*.csv")), folder
        for heading in ("**Command", "**Commit**", "**Machine**"):
            assert heading in notes, f"{folder.name}/README.md lacks {heading}"


def test_readme_methods_table_is_the_registry() -> None:
    text = README.read_text()
    section = text.split("## Methods", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([\w-]+)` \|", section, re.MULTILINE)
    assert sorted(listed) == sorted(METHODS)
    assert f"{NUMBER_WORDS[len(METHODS)].capitalize()} transfer methods are registered" in section


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_documented_imports_and_names_resolve(path: Path) -> None:
    text = path.read_text()
    for block in python_blocks(text):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{path.name}: from {node.module} import {alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
    for dotted in set(re.findall(r"`(gkt(?:\.\w+)+)", text)):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{path.name} names {dotted}"
            obj = getattr(obj, attr)


def test_readme_is_a_user_document() -> None:
    text = README.read_text()
    assert len(text.encode()) <= 30_000
    for path in [*DOCS, *sorted((ROOT / "results").rglob("README.md"))]:
        assert not re.search(r"\bSPEC\b|shared/", path.read_text()), f"{path} cites material outside the project"
