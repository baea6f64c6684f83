"""Training: the set-loss training loop, checkpoints with resume, DDP helpers.

Light package: nothing heavy is imported until an attribute is used, so
``import detr.train`` (and the CLI's ``detr.commands.train``) stays cheap.
"""

from __future__ import annotations

from runtime.lazy import lazy_getattr

__all__ = ["TrainConfig", "build_optimizer", "train", "train_one_epoch"]

_EXPORTS = {
    "TrainConfig": "detr.train.config",
    "train": "detr.train.loop",
    "train_one_epoch": "detr.train.epoch",
    "build_optimizer": "detr.train.optim",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS)
