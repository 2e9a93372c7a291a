"""The GPU check (benchmarks/gpu_check.sh) as a CPU dry run: every step it runs on a GPU machine runs
here too, tiny, under the conditions of that machine's image (gkt from src/, no pydantic or datasets)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def image_like_env(tmp_path: Path, blocked: tuple[str, ...] = ("pydantic", "datasets")) -> dict[str, str]:
    """The environment of the GPU machine's image as far as gkt is concerned: packages it lacks fail to import."""
    for name in blocked:
        (tmp_path / "blocked" / name).mkdir(parents=True)
        (tmp_path / "blocked" / name / "__init__.py").write_text(f"raise ImportError('no {name} on this image')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    return {**env, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "blocked"), "OMP_NUM_THREADS": "1",
            "GKT_HOME": str(tmp_path / "home")}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out), "--device", "cpu", "--tiny"],
                          env=image_like_env(tmp_path), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    transfer = read_csv(out / "transfer.csv")
    assert [r["variant"] for r in transfer] == ["plain fine-tuning (limit)", "kl-dp, outputs cached"]
    assert all(float(r["samples_per_s"]) > 0 and r["precision"] == "bf16" and r["student"] == "resnet18"
               for r in transfer)
    assert float(transfer[0]["ratio_to_limit"]) == 1.0 and float(transfer[1]["ratio_to_limit"]) > 0
    augmented = read_csv(out / "transfer_augment.csv")
    assert [r["variant"] for r in augmented] == ["plain fine-tuning + photo (limit)", "kl-dp + photo, outputs cached",
                                                 "kl-dp + photo, teacher online"]
    assert all(float(r["samples_per_s"]) > 0 for r in augmented) and float(augmented[0]["ratio_to_limit"]) == 1.0
    decode = read_csv(out / "decode.csv")
    assert [r["precision"] for r in decode] == ["fp32", "bf16"] and all(r["device"] == "cpu" for r in decode)
    assert all(float(r["analysis_images_per_s"]) > 0 and float(r["ratio_to_decode_limit"]) > 0 for r in decode)
    assert "kl-dp cached ÷ plain fine-tuning:" in (out / "log.txt").read_text()
    assert "torch" in (out / "env.txt").read_text()


def test_gpu_check_says_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out), "--device", "cpu", "--tiny"],
                          env=image_like_env(tmp_path, ("pydantic", "datasets", "timm")), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "cannot import what the check needs" in proc.stderr
    assert "no timm on this image" in proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "transfer.csv").exists()


def test_bench_views_runs_on_hub_layout_models(tmp_path: Path) -> None:
    """``benchmarks/bench_views.py`` stays runnable: a few photos, its CSV and its last line."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE", "TORCH_HOME")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_views.py"), "--images", "12", "--csv",
                           str(tmp_path / "views.csv")], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("training views vs the libraries' recipes: top-1 agreement min") and "(4 models)" in last
    rows = read_csv(tmp_path / "views.csv")
    assert {r["inputs"] for r in rows} == {"eval view", "photo augmentation", "one square decode (before)"}
    assert len(rows) == 12 and all(0 <= float(r["top1_agreement"]) <= 1 for r in rows)
