"""Data-parallel transfer with PyTorch's own distributed engine (``torchrun``).

``torchrun --nproc_per_node=N -m gkt transfer ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; gkt then
joins the process group (NCCL on CUDA, gloo on CPU), gives each rank ``1/N`` of every global batch (the
same permutation on every rank, as ``DistributedSampler`` does), wraps only the trainable modules in
``DistributedDataParallel``, evaluates a shard of the test set per rank and gathers the predictions, and
lets rank 0 alone write the run directory. While the ranks train, the trainable modules' BatchNorm layers
normalise with the statistics of the whole global batch (:func:`sync_batchnorm`), as one process would.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gkt.core.errors import GktError
from gkt.data.datasets import ImageDataset

log = logging.getLogger(__name__)


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


class _SumOverRanks(torch.autograd.Function):
    """Every rank's ``tensor`` summed over the ranks, differentiably: each rank's share of the sum feeds
    every rank's loss, so its gradient is the sum of every rank's gradient for the total."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CrossRankBatchNorm(_BatchNorm):
    """A BatchNorm layer that, training under several ranks, normalises with the mean and variance of the
    whole global batch and updates its running statistics from them, as one process given the whole batch
    would. Each rank's count, mean and sum of squared deviations go through one differentiable all-reduce
    and are combined exactly (Chan et al.), as ``torch.nn.SyncBatchNorm`` does; unlike it, this works on
    CPU (gloo), where DDP refuses ``SyncBatchNorm``, as well as on CUDA. timm's ``BatchNormAct2d`` keeps
    its dropout and activation (its ``drop``/``act`` children run after the normalisation)."""

    context: DistContext

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.context.enabled:
            y = self._global_batch_norm(x)
        else:
            y = super().forward(x)
        for post in ("drop", "act"):  # timm's BatchNormAct2d
            if post in self._modules:
                y = self._modules[post](y)
        return y

    @torch.compiler.disable  # a collective inside: --compile runs the layer eagerly, between compiled parts
    def _global_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        channels, dims = x.shape[1], [0, *range(2, x.dim())]
        shape = (1, channels, *([1] * (x.dim() - 2)))
        xf = x.float()
        mean = xf.mean(dims)
        local = torch.cat([mean.new_tensor([xf.numel() // channels]), mean,
                           (xf - mean.view(shape)).square().sum(dims)])
        rows = _SumOverRanks.apply(F.pad(local[None], (0, 0, self.context.rank,
                                                       self.context.world - self.context.rank - 1)))
        counts, means, squares = rows[:, :1], rows[:, 1:channels + 1], rows[:, channels + 1:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (squares + counts * (means - mean).square()).sum(0) / total  # biased, as BatchNorm normalises
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():  # running variance unbiased, as BatchNorm keeps it
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * total / (total - 1).clamp(min=1)).to(self.running_var.dtype), factor)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _synced_form(layer: nn.Module) -> bool:
    """Whether ``layer`` is a BatchNorm whose forward :class:`CrossRankBatchNorm` reproduces: torch's
    BatchNorm1d/2d/3d, and timm's BatchNormAct2d (normalisation, then its dropout and activation)."""
    from timm.layers import BatchNormAct2d

    return type(layer).forward is _BatchNorm.forward or type(layer) is BatchNormAct2d


def sync_batchnorm(module: nn.Module, context: DistContext) -> Callable[[], None]:
    """Make ``module``'s BatchNorm layers normalise over the global batch while several ranks train:
    each is swapped for a :class:`CrossRankBatchNorm` that shares its parameters and buffers (no-op in one
    process). Returns the undo, which puts the plain layers back (with the trained values), so what is
    saved and evaluated afterwards is the original architecture."""
    if not context.enabled:
        return lambda: None
    swapped: list[tuple[nn.Module, str, nn.Module, CrossRankBatchNorm]] = []
    for parent_name, parent in list(module.named_modules()):
        for name, layer in list(parent.named_children()):
            if not isinstance(layer, _BatchNorm) or isinstance(layer, CrossRankBatchNorm):
                continue
            if not _synced_form(layer):
                log.warning("%s (%s) normalises with each rank's share of the batch: gkt cannot synchronise "
                            "its statistics across ranks", f"{parent_name}.{name}".lstrip("."), type(layer).__name__)
                continue
            synced = CrossRankBatchNorm(layer.num_features, layer.eps, layer.momentum, layer.affine,
                                        layer.track_running_stats, device="meta")
            synced._parameters, synced._buffers = layer._parameters, layer._buffers
            for post in ("drop", "act"):
                if post in layer._modules:
                    synced._modules[post] = layer._modules[post]
            synced.context = context
            synced.train(layer.training)
            setattr(parent, name, synced)
            swapped.append((parent, name, layer, synced))

    def undo() -> None:
        for parent, name, layer, synced in reversed(swapped):
            layer.train(synced.training)
            setattr(parent, name, layer)

    return undo
