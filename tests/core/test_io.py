"""Atomic writes: permissions, no leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gkt.core.io import atomic_path, write_json


def test_atomic_writes_get_the_permissions_of_a_new_file(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": 1})
    plain = tmp_path / "plain"
    plain.write_text("x")  # what open() gives under this process's umask
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["a.json", "plain"]  # nothing left by the failed write
