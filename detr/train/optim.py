"""AdamW with the paper's two parameter groups and StepLR schedule."""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(
    model: nn.Module, *, lr: float, lr_backbone: float, weight_decay: float,
) -> torch.optim.AdamW:
    """AdamW over trainable parameters: backbone (names containing ``backbone``)
    at ``lr_backbone``, everything else at ``lr`` (official DETR ``main.py``).

    Parameters with ``requires_grad=False`` (frozen stem) are left out; a backbone
    with lr 0 is left out too, since AdamW would still apply weight decay to it.
    """
    backbone = [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]
    groups: list[dict] = [{"params": rest, "lr": lr}]
    if backbone and lr_backbone > 0:
        groups.append({"params": backbone, "lr": lr_backbone})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, lr_drop: int,
) -> torch.optim.lr_scheduler.StepLR:
    """Divide every group's lr by 10 after ``lr_drop`` epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_drop, gamma=0.1)
