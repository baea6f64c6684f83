"""Training state that must survive a restart: RNG states and the training checkpoint.

A resumed run must end with exactly the weights of an uninterrupted one, so
besides model/optimizer/scheduler we store the python, numpy and torch (CPU
and CUDA) generator states of every process. Everything is stored as plain
types + tensors so ``torch.load(weights_only=True)`` can read it back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.errors import ModelFormatError


def get_rng_state() -> dict[str, Any]:
    """This process's generator states, as weights_only-loadable values."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        # numpy's legacy state: (name, uint32[624] keys, pos, has_gauss, cached_gaussian)
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint written by :func:`detr.train.loop.train` (tensors on CPU).

    Raises ``ModelFormatError`` naming the file if it is missing, unreadable or
    lacks the resume fields (e.g. an exported weights-only checkpoint).
    """
    if not path.is_file():
        raise ModelFormatError(path, "no checkpoint to resume from "
                               "(start without --resume, or check --out)")
    from detr.checkpoint_schema import check_training_fields, torch_load

    raw = torch_load(path, "training checkpoint")
    if not isinstance(raw, dict):
        raise ModelFormatError(path, f"expected a dict checkpoint, got {type(raw).__name__}")
    missing = [k for k in ("model", "optimizer", "lr_scheduler", "epoch", "rng_state",
                           "train_config") if k not in raw]
    if missing:
        raise ModelFormatError(path, f"not a resumable training checkpoint (missing {missing})")
    check_training_fields(raw, path)
    return raw


def _to_lists(value: Any) -> Any:
    """Tuples -> lists recursively (python's RNG state is nested tuples)."""
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value
