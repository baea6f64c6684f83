"""``detr-edge train``: train DETR with the set loss (thin wrapper over detr.train.train).

The flags and their conversion into ``TrainConfig`` are one table in ``detr.train.flags``.
"""

from __future__ import annotations

import argparse

from detr.train.flags import add_arguments, config_from_args

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    import os

    from detr.train import train

    result = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 prints
        print(f"trained {result.epochs_completed} epochs; checkpoint: {result.checkpoint}")
    return 0
