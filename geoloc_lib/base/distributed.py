"""Several processes, launched by PyTorch's own `torchrun`, sharing one extraction or one training.

`torchrun --nproc_per_node=N -m geoloc_lib.extract ...` (or `-m geoloc_lib.train ...`) starts N
processes with RANK, WORLD_SIZE and LOCAL_RANK in their environment; `from_env` joins them into one
process group (NCCL on CUDA, gloo on the CPU). Without torchrun everything runs as a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def device(self, name: str) -> torch.device:
        """The device of this process: with several processes on CUDA, the one of its local rank."""
        from geoloc_lib.base.devices import select_device

        device = select_device(name)
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


def from_env(device_name: str = "auto") -> World:
    """This process's place in the world torchrun started, joining the process group on first use."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    if size > 1 and not dist.is_initialized():
        cuda = world.device(device_name).type == "cuda"
        if cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return world


def current() -> World:
    """This process's place in an initialised process group, or a world of one."""
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(items: int, batch_size: int, world: World) -> range:
    """This rank's contiguous block of whole batches of `items`: every batch is the one a single process
    would make, so the merged result equals a single-process run to the bit."""
    batches = -(-items // batch_size)
    first = batches * world.rank // world.size
    last = batches * (world.rank + 1) // world.size
    return range(min(items, first * batch_size), min(items, last * batch_size))


def data_parallel(model, world: World, device: torch.device):
    """The modules a training step calls: the model's heads and encoders, or, with several processes,
    DistributedDataParallel wrappers of them (the heads, and the encoders when one trains) that average
    the gradients of all processes."""
    if not world.distributed:
        return model.heads, model.encoders
    ids = [device.index] if device.type == "cuda" else None
    encoders = model.encoders
    if not encoders.frozen:
        if device.type == "cuda":  # batch norm over the global batch (SyncBatchNorm needs CUDA)
            encoders = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoders)
        encoders = DistributedDataParallel(encoders, device_ids=ids)
    return DistributedDataParallel(model.heads, device_ids=ids), encoders
