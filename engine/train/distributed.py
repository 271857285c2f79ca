"""Process group and FSDP sharding: gloo on CPU, NCCL on CUDA; one process is the plain case.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) or as one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DistContext:
    """Where this process sits: rank among world, and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> DistContext:
    """Join the torchrun process group if there is one; pick the device ("auto": CUDA if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        log.info("rank %d of %d on %s", rank, world, dev)
    return DistContext(rank, world, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: DistContext, value: float) -> float:
    """Sum a number over ranks."""
    if not ctx.is_distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item())


def shard(root: nn.Module, blocks: list[nn.Module], ctx: DistContext) -> nn.Module:
    """FSDP2: shard each block (decoder layers, vision blocks), then the root; no-op alone.

    Gradients are averaged over ranks by FSDP, so losses are scaled by `world` beforehand.
    """
    if not ctx.is_distributed:
        return root
    from torch.distributed.fsdp import fully_shard

    for b in blocks:
        fully_shard(b)
    fully_shard(root)
    return root


def broadcast_object(ctx: DistContext, obj: T) -> T:
    """Rank 0's `obj` on every rank."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()
