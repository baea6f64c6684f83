"""Turn a training checkpoint into a release checkpoint (what detr/assets ships).

Drops the resume-only state (optimizer moments are 2x the weights, RNG
states), keeps provenance (train_config, epoch, metrics), and optionally
stores floating weights in FP16 to halve the file. ``detr.load_checkpoint``
reads it unchanged: ``load_state_dict`` copies FP16 values into the FP32
parameters (an exact upcast), so the loaded model runs in FP32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RESUME_ONLY = ("optimizer", "lr_scheduler", "rng_state", "grad_scaler")


def release_checkpoint(src: str | Path, dst: str | Path, *, fp16: bool = True,
                       metrics: dict[str, Any] | None = None) -> Path:
    """Write ``dst`` from the training checkpoint ``src``; returns ``dst``.

    ``metrics`` (e.g. val AP) are stored under ``'metrics'``. Floating tensors
    become FP16 when ``fp16``; integer buffers (``num_batches_tracked``) stay.
    """
    import detr
    from detr.config import config_from_dict
    from detr.train.state import read_training_checkpoint

    raw = read_training_checkpoint(Path(src))
    loaded = detr.load_checkpoint(src)
    model = loaded.model
    if fp16:
        model = model.half()  # floating params and buffers only
    extra: dict[str, Any] = {"epoch": raw["epoch"], "train_config": raw["train_config"],
                             "weights_dtype": "float16" if fp16 else "float32"}
    if "training_resize" in raw:  # how it was trained: eval and export follow it
        extra["training_resize"] = raw["training_resize"]
    if metrics:
        extra["metrics"] = dict(metrics)
    detr.save_checkpoint(dst, model, config_from_dict(raw["config"]), loaded.class_names,
                         loaded.label_map, extra=extra)
    return Path(dst)

