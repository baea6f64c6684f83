"""One training epoch: forward, set loss, backward, clip, step; with a NaN stop.

Follows the official DETR ``engine.train_one_epoch``: the total loss is the
weighted sum of the criterion's losses (``criterion.weight_dict``), gradients
are clipped to ``clip_max_norm`` (paper: 0.1), and the logged values are the
losses averaged over processes. A non-finite loss raises
``TrainingDivergedError`` *before* the optimizer step, so the weights (and the
last checkpoint on disk) stay good.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runtime.errors import TrainingDivergedError


@dataclass
class EpochStats:
    """Mean of each logged value over the epoch's steps (weighted terms unscaled)."""

    values: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, logged: Mapping[str, float], images: int) -> None:
        for key, value in logged.items():
            self.values[key] = self.values.get(key, 0.0) + value
        self.steps += 1
        self.images += images

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.values.items()}


def targets_to(targets: Iterable[Mapping[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Move the tensors of each target dict to ``device`` (other values as they are)."""
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
            for t in targets]


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CPU (no GradScaler needed), fp16 on CUDA; nothing when disabled."""
    if not enabled:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    *,
    clip_max_norm: float = 0.1,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> EpochStats:
    """Train one pass over ``data_loader`` (batches of ``(NestedTensor, targets)``).

    targets: list of dicts with ``labels`` int64 [N] contiguous and ``boxes``
    float [N, 4] normalised cxcywh (relative to each image's valid region).
    Returns the per-epoch means of ``loss`` (weighted total), every weighted
    term in ``criterion.weight_dict`` (unscaled) and ``class_error``.
    Raises ``TrainingDivergedError`` on a NaN/inf loss, before any update.
    """
    import time

    model.train()
    criterion.train()
    weight_dict: dict[str, float] = criterion.weight_dict  # type: ignore[assignment]
    stats = EpochStats()
    bar = _progress_bar(data_loader, max_steps, epoch, progress)
    start = time.perf_counter()
    try:
        for step, (samples, targets) in enumerate(data_loader):
            if max_steps is not None and step >= max_steps:
                break
            samples = samples.to(device)
            targets = targets_to(targets, device)
            with autocast_context(device, amp):
                outputs = model(samples)
            # The set loss (Hungarian matching, GIoU) runs in float32 whatever autocast did.
            loss_dict = criterion(_to_float(outputs), targets)
            losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
            entry = _logged_losses(loss_dict, weight_dict, epoch, step)
            _update(model, optimizer, losses, scaler, clip_max_norm)
            stats.add(entry, images=len(targets))
            bar.update(1)
            bar.set_postfix({k: f"{entry[k]:.3f}" for k in
                             ("loss", "loss_ce", "loss_bbox", "loss_giou") if k in entry})
    finally:
        bar.close()
        stats.seconds = time.perf_counter() - start
    return stats


def _progress_bar(data_loader: Iterable, max_steps: int | None, epoch: int, progress: bool
                  ) -> Any:
    """A tqdm bar over the epoch's steps, shown on the main process only."""
    from tqdm import tqdm

    from detr import distributed as dist_utils

    total = len(data_loader) if hasattr(data_loader, "__len__") else None  # type: ignore[arg-type]
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    show = progress and dist_utils.is_main_process()
    return tqdm(total=total, desc=f"epoch {epoch}", disable=not show, dynamic_ncols=True,
                leave=False)


def _logged_losses(loss_dict: Mapping[str, torch.Tensor], weight_dict: Mapping[str, float],
                   epoch: int, step: int) -> dict[str, float]:
    """The step's log entry: ``loss`` (weighted total), the main weighted terms and
    ``class_error``, averaged over processes. Raises ``TrainingDivergedError`` when the
    total is not finite."""
    from detr import distributed as dist_utils

    # Logged values are averaged over processes, so every rank sees the same
    # (non-)finite total and they all stop together.
    reduced = dist_utils.reduce_dict({k: v.detach() for k, v in loss_dict.items()})
    logged = {k: float(v) for k, v in reduced.items()}
    loss_value = sum(logged[k] * weight_dict[k] for k in logged if k in weight_dict)
    if not math.isfinite(loss_value):
        bad = {k: v for k, v in logged.items() if not math.isfinite(v)}
        raise TrainingDivergedError(
            f"loss is {loss_value} at epoch {epoch}, step {step} "
            f"(non-finite terms: {bad or 'none; the weighted sum overflowed'}); "
            "weights were not updated and the last good checkpoint is kept. "
            "Try a lower --lr/--lr-backbone, keep --clip-max-norm, or disable --amp")
    entry = {"loss": loss_value}
    entry.update({k: logged[k] for k in weight_dict if k in logged and not _is_aux(k)})
    if "class_error" in logged:
        entry["class_error"] = logged["class_error"]
    return entry


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, losses: torch.Tensor,
            scaler: torch.amp.GradScaler | None, clip_max_norm: float) -> None:
    """Backward, clip the gradient norm (unscaled first with a GradScaler), step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses).backward()
        scaler.unscale_(optimizer)
    else:
        losses.backward()
    if clip_max_norm > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def _is_aux(key: str) -> bool:
    """``loss_ce_0`` etc.: an auxiliary decoder layer's term (summed into ``loss``, not shown)."""
    return key.rsplit("_", 1)[-1].isdigit()


def _to_float(outputs: Any) -> Any:
    """Cast every floating tensor in a nested dict/list structure to float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(v) for v in outputs)
    return outputs
