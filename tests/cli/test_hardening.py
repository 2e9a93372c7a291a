"""Issue 29's cases that need more than one catalogue row: an image folder holding a decompression bomb
(refused naming it, or left out under ``--bad-images skip``), and text inputs given as pipes."""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from pathlib import Path

import pytest
from conftest import write_model

from gkt.cli import main
from gkt.core.io import read_json
from gkt.core.limits import MAX_IMAGE_PIXELS, read_text_input
from gkt.data.decode import UnreadableImage, check_image_header
from tests.cli.test_image_data_cli import CLASSES, rgb_model
from tests.data.test_decode import write_jpeg_folder


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` RGB pixels in its header (a few bytes of pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def test_header_check_refuses_before_decoding() -> None:
    import torch

    for width, height in ((60000, 60000), (MAX_IMAGE_PIXELS // 1000 + 1, 1000)):
        encoded = torch.frombuffer(bytearray(png_header_only(width, height)), dtype=torch.uint8)
        with pytest.raises(UnreadableImage, match=r"header claims .* pixels, more than the 89,478,485 gkt"):
            check_image_header(encoded)


def test_a_decompression_bomb_in_a_folder_is_named_or_skipped(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "imgs"
    write_jpeg_folder(root / "train", {c: 2 for c in CLASSES})
    write_jpeg_folder(root / "val", {c: 3 for c in CLASSES})
    (root / "val" / "dog" / "bomb.png").write_bytes(png_header_only(60000, 60000))
    a, b = rgb_model(tmp_path / "a", 0), rgb_model(tmp_path / "b", 1)
    args = ["analyze", "--models", a, b, "--data", f"folder:{root}", "--split", "test", "--no-semantic",
            "--no-figures", "--no-random-baseline", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(r"bomb\.png: unreadable image \(its header claims (60000×60000 = )?3,600,000,000 pixels",
                     err)
    assert "--bad-images skip" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    assert main(args + ["--bad-images", "skip"]) == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().out
    run = max((tmp_path / "runs").glob("analyze-*"))
    assert read_json(run / "summary.json")["samples"] == 9


def _pipe(tmp_path: Path, text: str, times: int = 1) -> Path:
    """A named pipe that a writer thread fills with ``text`` ``times`` times (as a shell's ``<(…)``)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        for _ in range(times):
            with open(fifo, "w") as f:
                f.write(text)
    threading.Thread(target=write, daemon=True).start()
    return fifo


def test_a_pipe_is_read_once_and_remembered(tmp_path: Path) -> None:
    fifo = _pipe(tmp_path, "models: [a, b]\n")
    assert read_text_input(fifo, "--config") == "models: [a, b]\n"
    assert read_text_input(fifo, "--config") == "models: [a, b]\n"  # a second read does not wait for a writer


def test_config_given_as_a_pipe(tmp_path: Path, tiny_fmnist_dir: Path) -> None:
    a, b = write_model(tmp_path / "a", 1), write_model(tmp_path / "b", 2)
    fifo = _pipe(tmp_path, f"models: [{a}, {b}]\nno_figures: true\nno_semantic: true\n"
                           "no_random_baseline: true\n")
    assert main(["analyze", "--config", str(fifo), "--data-dir", str(tiny_fmnist_dir), "--threads", "1",
                 "--out", str(tmp_path / "runs")]) == 0


def test_an_empty_variable_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           tiny_fmnist_dir: Path) -> None:
    """``GKT_HOME=`` (set, empty) is the default home, not the current directory; so for every GKT_*."""
    from gkt.core.io import cache_home

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for name in ("GKT_HOME", "GKT_DATA", "GKT_IMG_SIZE", "GKT_BAD_IMAGES", "GKT_MIN_FREE_MB"):
        monkeypatch.setenv(name, "")
    assert cache_home() == tmp_path / "user" / ".cache" / "gkt"
    monkeypatch.chdir(tmp_path)
    a, b = write_model(tmp_path / "a", 1), write_model(tmp_path / "b", 2)
    assert main(["analyze", "--models", a, b, "--data-dir", str(tiny_fmnist_dir), "--no-figures",
                 "--no-semantic", "--no-random-baseline", "--threads", "1",
                 "--out", str(tmp_path / "runs")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.json", "a.safetensors", "b.json", "b.safetensors", "fmnist", "runs", "user"]


def test_report_skips_a_fifo_in_a_run_directory(tmp_path: Path) -> None:
    """A named pipe among a run's files is not opened (reading it would wait for a writer forever)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"command": "analyze", "status": "ok"}')
    (run / "pairs.csv").write_text("a,b\n1,2\n")
    os.mkfifo(run / "stuck.csv")
    assert main(["report", str(run), "--out", str(tmp_path / "runs")]) == 0
    assert "stuck.csv" not in (run / "report.md").read_text()


def test_out_with_a_name_longer_than_the_file_system_takes(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / ("o" * 300)
    assert main(["zoo", "list", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"gkt: error: --out \S+ \(\d+ characters\): a name in it is 300 bytes long, more "
                        r"than the 255 its file system allows; give a shorter path\n", err), err


EVIL = "<img src=x onerror=alert(1)>"


def test_a_class_name_with_html_is_escaped_in_every_report_format(tmp_path: Path) -> None:
    classes = [EVIL, "dog", "owl`|x"]
    root = tmp_path / "imgs"
    write_jpeg_folder(root / "train", {c: 2 for c in classes})
    write_jpeg_folder(root / "val", {c: 3 for c in classes})
    a, b = rgb_model(tmp_path / "a", 0, classes), rgb_model(tmp_path / "b", 1, classes)
    assert main(["analyze", "--models", a, b, "--data", f"folder:{root}", "--split", "test", "--no-semantic",
                 "--no-figures", "--no-random-baseline", "--out", str(tmp_path / "runs"),
                 "--device", "cpu"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert EVIL in (run / "pair_classes.csv").read_text()  # the data keep the name as it is
    assert main(["report", str(run), "--out", str(tmp_path / "reports")]) == 0
    md, page = (run / "report.md").read_text(), (run / "report.html").read_text()
    assert EVIL not in md and "\\<img src=x onerror=alert(1)\\>" in md and "owl\\`\\|x" in md
    assert EVIL not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_markdown_and_plain_text_escaping() -> None:
    from gkt.reporting.tables import format_table, markdown_fence, markdown_text

    assert markdown_text("[x](javascript:alert(1)) <b>&") == "[x]\\(javascript:alert(1)) \\<b\\>\\&"
    assert markdown_text("two\nlines") == "two lines"
    assert format_table([{"name": "\x1b[2Jcleared"}]).splitlines()[-1] == "\\x1b[2Jcleared"
    assert markdown_fence('{"a": "```"}') == '````json\n{"a": "```"}\n````'


@pytest.fixture
def own_hubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Empty Hugging Face and torch homes of this test, offline: ``(hf_home, torch_home)``."""
    import huggingface_hub.constants as hf_constants

    hf_home, torch_home = tmp_path / "hf", tmp_path / "torch"
    for key, value in {"HF_HOME": hf_home, "HF_HUB_CACHE": hf_home / "hub", "TORCH_HOME": torch_home,
                       "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hf_home, torch_home


def _evil_pickle(path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(1), "payload": os.system}, path)


def _export_fails(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    assert main(["export", spec, "--to", str(tmp_path / "export"), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "export").exists()
    assert "weights_only" not in err and "must be in" not in err and "put the weights" not in err
    return err


def test_a_pickle_in_the_hugging_face_cache_is_named_not_relayed(tmp_path: Path, own_hubs: tuple[Path, Path],
                                                                  capsys: pytest.CaptureFixture) -> None:
    from tests.hubs import TIMM_MODELS, save_timm_snapshot

    snapshot = save_timm_snapshot(own_hubs[0], TIMM_MODELS[0], 0)
    (snapshot / "model.safetensors").unlink(missing_ok=True)
    _evil_pickle(snapshot / "pytorch_model.bin")
    err = _export_fails(f"timm:{TIMM_MODELS[0]}", tmp_path, capsys)
    assert "its weights file in the Hugging Face cache ($HF_HOME/hub) holds Python objects" in err
    assert "delete that model's folder from the cache" in err


def test_a_pickle_at_the_torch_hub_cache_path_is_named_not_relayed(tmp_path: Path,
                                                                    own_hubs: tuple[Path, Path],
                                                                    capsys: pytest.CaptureFixture) -> None:
    import torchvision

    from tests.hubs import TORCHVISION_MODEL

    arch, weights = TORCHVISION_MODEL
    url = torchvision.models.get_model_weights(arch)[weights].url
    _evil_pickle(own_hubs[1] / "hub" / "checkpoints" / Path(url).name)
    err = _export_fails(f"torchvision:{arch}?weights={weights}", tmp_path, capsys)
    assert f"{Path(url).name} is not the official weights file: its SHA-256 does not begin with" in err
    assert "as its name says (damaged or replaced); delete it" in err


@pytest.mark.parametrize(("where", "label"), [
    ("hf/datasets/x.arrow", r"\$HF_DATASETS_CACHE \(or \$HF_HOME\)"),
    ("hf/hub/models--a--b/x", r"\$HF_HUB_CACHE \(or \$HF_HOME\)"),
    ("hf/token", r"\$HF_HOME"), ("torch/hub/x.pth", r"\$TORCH_HOME"), ("gkt/predictions/x", r"\$GKT_HOME")])
def test_a_read_only_location_is_named_by_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       where: str, label: str) -> None:
    import errno

    from gkt.core.errors import storage_error

    for name, sub in (("HF_HOME", "hf"), ("TORCH_HOME", "torch"), ("GKT_HOME", "gkt")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    for name in ("HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    error = storage_error(OSError(errno.EROFS, "Read-only file system", str(tmp_path / where)))
    assert re.fullmatch(rf"\S+: Read-only file system; choose a writable {label}", str(error)), str(error)


def test_an_unknown_gkt_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("GKT_HOEM", str(tmp_path))
    main(["zoo", "list", "--zoo-dir", str(tmp_path / "zoo"), "--out", str(tmp_path / "runs")])
    assert "gkt: warning: $GKT_HOEM is set but gkt reads no such variable (it reads GKT_BAD_IMAGES" in \
        capsys.readouterr().err


def test_out_empty_is_refused_not_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["zoo", "list", "--out", ""]) == 2
    assert "--out: an empty value names nothing" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_pipe_among_a_folder_s_images_is_never_opened(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "imgs"
    write_jpeg_folder(root / "train", {c: 2 for c in CLASSES})
    write_jpeg_folder(root / "val", {c: 3 for c in CLASSES})
    os.mkfifo(root / "val" / "dog" / "stuck.jpg")
    a, b = rgb_model(tmp_path / "a", 0), rgb_model(tmp_path / "b", 1)
    args = ["analyze", "--models", a, b, "--data", f"folder:{root}", "--split", "test", "--no-semantic",
            "--no-figures", "--no-random-baseline", "--out", str(tmp_path / "runs"), "--device", "cpu"]
    assert main(args) == 2
    assert "stuck.jpg: unreadable image (not a regular file (a pipe or a device))" in capsys.readouterr().err
    assert main([*args, "--bad-images", "skip"]) == 0


def test_only_the_first_frame_of_an_animated_image_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision decodes every frame of a GIF (thousands of frames: gigabytes); PIL decodes the first."""
    import io

    import numpy as np
    import torch
    import torchvision.io
    from PIL import Image

    from gkt.data.decode import decode_image

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert("P")
              for _ in range(50)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    monkeypatch.setattr(torchvision.io, "decode_image", lambda *a, **k: pytest.fail("decoded every frame"))
    image = decode_image(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), 3)
    assert image.shape == (3, 30, 40)
    assert image.equal(torch.from_numpy(np.array(frames[0].convert("RGB"))).permute(2, 0, 1))
