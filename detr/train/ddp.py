"""torchrun support: process group, samplers, rank-0-only side effects.

Launch with ``torchrun --nproc_per_node N -m runtime.cli train ...`` (or the
``detr-edge`` script). torchrun sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them training runs as a single process. NCCL is used
when the process has a CUDA device, gloo on CPU (NCCL needs GPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the (possibly single-process) job."""

    rank: int  # global rank, 0 = the process that writes files and prints
    world_size: int  # number of processes
    local_rank: int  # rank on this machine (selects the CUDA device)
    device: torch.device  # device this process trains on
    initialized_here: bool  # True if init_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    from runtime.errors import BackendUnavailableError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {name!r} requested but no CUDA GPU is usable")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if the environment describes one.

    Backend: NCCL on CUDA, gloo on CPU. Reuses an already initialized group
    (tests spawning processes themselves).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        dev = resolve_device(device, local_rank)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, False)
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://",
                            world_size=world_size, rank=rank)
    dist.barrier()
    return DistInfo(rank, world_size, local_rank, dev, True)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for a single process)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()

