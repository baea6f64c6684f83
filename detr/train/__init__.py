"""Training: the set-loss training loop, checkpoints with resume, DDP helpers.

Light package: nothing heavy is imported until an attribute is used, so
``import detr.train`` (and the CLI's ``detr.commands.train``) stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "build_optimizer", "train", "train_one_epoch"]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from detr.train.config import TrainConfig

        return TrainConfig
    if name == "train":
        from detr.train.loop import train

        return train
    if name == "train_one_epoch":
        from detr.train.epoch import train_one_epoch

        return train_one_epoch
    if name == "build_optimizer":
        from detr.train.optim import build_optimizer

        return build_optimizer
    raise AttributeError(f"module 'detr.train' has no attribute {name!r}")
