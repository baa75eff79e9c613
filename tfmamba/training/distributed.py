"""Data-parallel plumbing: who this process is, the DDP wrapper and gathering results from all ranks.

Everything degrades to plain single-process behaviour when `torch.distributed` is not initialised
(the CLI); under Ray Train's TorchTrainer, which initialises the process group, the same calls
wrap the model in DDP and gather across workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Dist:
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def wrap(model: nn.Module, device: torch.device, where: Dist) -> nn.Module:
    """DDP around `model` when a process group is up (it broadcasts rank 0's weights), else `model`."""
    if not where.active:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(net: nn.Module) -> nn.Module:
    """The model `wrap` put DDP around, or `net` itself."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def all_gather(obj: Any, where: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order ([obj] without a process group)."""
    if not where.active:
        return [obj]
    out: list[Any] = [None] * where.world
    dist.all_gather_object(out, obj)
    return out


def all_sum(values: list[float], device: torch.device, where: Dist) -> list[float]:
    """Element-wise sum of `values` over ranks (float64)."""
    if not where.active:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def device_sum(tensor: torch.Tensor, where: Dist) -> torch.Tensor:
    """`tensor` summed over ranks, on the device, without waiting for it (so no host sync)."""
    if where.active:
        dist.all_reduce(tensor)
    return tensor


def barrier(where: Dist) -> None:
    if where.active:
        dist.barrier()
