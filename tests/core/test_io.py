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


def test_checked_tensor_files_are_read_back_only_when_intact(tmp_path: Path) -> None:
    import torch

    from gkt.core.checked import load_checked, save_checked

    path = tmp_path / "t.safetensors"
    assert load_checked(path) is None
    save_checked(path, {"x": torch.arange(1000.0)}, {"what": "test"})
    tensors, meta = load_checked(path)
    assert torch.equal(tensors["x"], torch.arange(1000.0)) and meta["what"] == "test"
    raw = bytearray(path.read_bytes())
    raw[-8:] = bytes(8)  # the last value changed in place: still a readable file
    path.write_bytes(bytes(raw))
    assert load_checked(path) is None
    path.write_bytes(b"garbage")
    assert load_checked(path) is None
