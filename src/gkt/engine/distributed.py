"""Data-parallel transfer with PyTorch's own distributed engine (``torchrun``).

``torchrun --nproc_per_node=N -m gkt transfer ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; gkt then
joins the process group (NCCL on CUDA, gloo on CPU), gives each rank ``1/N`` of every global batch (the
same permutation on every rank, as ``DistributedSampler`` does), wraps only the trainable modules in
``DistributedDataParallel``, evaluates a shard of the test set per rank and gathers the predictions, and
lets rank 0 alone write the run directory.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gkt.core.errors import GktError
from gkt.data.datasets import ImageDataset


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (``world == 1``: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_batch(self, batch_size: int) -> int:
        """This rank's share of a global batch (the global batch must split evenly)."""
        if batch_size % self.world:
            raise GktError(f"the global batch size {batch_size} does not split over {self.world} processes; "
                           f"use a multiple of {self.world}")
        return batch_size // self.world

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (returns a new tensor)."""
        if not self.enabled:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate every rank's ``rows`` in rank order, rank r holding part r of ``arange(total).tensor_split``."""
        if not self.enabled:
            return rows
        width = -(-total // self.world)
        padded = torch.zeros((width, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        sizes = [len(r) for r in torch.arange(total).tensor_split(self.world)]
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def shard(self, dataset: ImageDataset) -> ImageDataset:
        """This rank's contiguous part of ``dataset`` (for evaluation)."""
        if not self.enabled:
            return dataset
        rows = torch.arange(len(dataset)).tensor_split(self.world)[self.rank]
        return dataset.subset(rows, f"rank{self.rank}of{self.world}")

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per rank on CUDA (``cuda:LOCAL_RANK``); CPU stays CPU."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested


def from_environment(device: torch.device) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, or a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    context = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend)
    return context


def shutdown(completed: bool = False) -> None:
    """Leave the process group. After a ``completed`` command every rank first waits at a barrier: a rank
    that tears its connections down while another still uses them can abort the other at exit. (After a
    failure there is no barrier, as the failed rank may never reach it; torchrun stops the others.)"""
    if dist.is_initialized():
        if completed:
            with contextlib.suppress(RuntimeError):  # another rank failed and left: nothing more to wait for
                dist.barrier()
        dist.destroy_process_group()
