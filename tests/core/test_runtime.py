"""Devices and precision: autocast resolution, and the warning when a GPU is present but unusable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from gkt.core import runtime
from gkt.core.errors import GktError


def test_autocast_dtypes() -> None:
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype("fp32", cpu) is None and runtime.autocast_dtype("auto", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(GktError, match="fp16 autocast needs a CUDA device"):
        runtime.autocast_dtype("fp16", cpu)
    with pytest.raises(GktError, match="unknown precision"):
        runtime.autocast_dtype("fp8", cpu)
    with runtime.autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_driver_version_is_read_from_the_kernel_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.57.02  Tue Jul 13 16:14:05 UTC 2021\n"
                       "GCC version:  gcc version 9.3.0\n")
    monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", str(version))
    assert runtime.nvidia_driver_version() == "470.57.02"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build\n")
    assert runtime.nvidia_driver_version() == "550.54.15"
    monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", str(tmp_path / "absent"))
    assert runtime.nvidia_driver_version() is None and runtime.unusable_gpu_warning() is None


def test_unusable_gpu_is_named_with_driver_and_cuda_versions(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "nvidia_driver_version", lambda: "470.57.02")
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    with caplog.at_level(logging.WARNING, logger="gkt.core.runtime"):
        assert runtime.resolve_device("auto") == torch.device("cpu")
    assert "driver 470.57.02" in caplog.text and "CUDA 13.2" in caplog.text and "runs on the CPU" in caplog.text
    with pytest.raises(GktError, match="driver 470.57.02"):
        runtime.resolve_device("cuda")


def test_a_dead_data_loading_worker_is_the_users_to_fix() -> None:
    from gkt.core.errors import storage_error

    bus = RuntimeError("DataLoader worker (pid 7) is killed by signal: Bus error. It is possible that dataloader's "
                       "workers are out of shared memory.")
    assert "--shm-size" in str(storage_error(bus))
    try:  # torch re-raises inside its own handling: the cause is found down the chain
        try:
            raise RuntimeError("unable to open shared memory object </torch_1_2> in read-write mode: "
                               "Too many open files (24)")
        except RuntimeError as inner:
            raise ValueError("collate failed") from inner
    except ValueError as outer:
        assert "ulimit -n" in str(storage_error(outer))
    assert storage_error(RuntimeError("shape mismatch")) is None
