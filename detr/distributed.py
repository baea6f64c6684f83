"""Small torch.distributed helpers that also work in a single process.

Every function is a no-op (or the obvious single-process answer) when
torch.distributed is unavailable or no process group is initialized, so the
loss and training code call them unconditionally. Process-group setup itself
lives in ``detr/train/ddp.py``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist_avail_and_initialized() -> bool:
    """True when a torch.distributed process group is up."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0, the process that prints and writes files."""
    return get_rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all processes (a new tensor; input untouched)."""
    out = tensor.clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def reduce_dict(values: dict[str, Tensor], average: bool = True) -> dict[str, Tensor]:
    """All-reduce a dict of scalar tensors (e.g. the loss dict) for logging.

    Keys are sorted so every rank stacks the values in the same order; all
    ranks must pass the same keys. Returns a new dict of 0-d tensors, averaged
    over processes when ``average`` else summed.
    """
    world_size = get_world_size()
    if world_size < 2:
        return dict(values)
    with torch.no_grad():
        names = sorted(values)
        stacked = torch.stack([values[k].reshape(()).float() for k in names])  # [len(names)]
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        if average:
            stacked /= world_size
        return dict(zip(names, stacked.unbind(0)))
