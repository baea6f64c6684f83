"""Box conversions, areas, IoU and generalized IoU in torch (the only torch copy).

Formats:
- ``cxcywh``: ``(cx, cy, w, h)``; DETR's predictions and targets use it,
  normalised to [0, 1] by the image (valid region) size.
- ``xyxy``: ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``, any unit.

Generalized IoU is from Rezatofighi et al. 2019 ("Generalized Intersection
over Union"); DETR uses ``1 - GIoU`` as a scale-invariant box loss and
``-GIoU`` as a matching cost. The numpy copy for the runtime lives in
``runtime/decode.py`` (runtime/ never imports torch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from runtime.errors import InputError


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x0, y0, x1, y1), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) -> ``[..., 4]`` (cx, cy, w, h), same units."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``[N, 4]`` xyxy boxes -> ``[N]``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _check_xyxy(boxes: Tensor, name: str) -> None:
    """Raise on boxes with ``x1 < x0`` or ``y1 < y0`` (the official code asserts).

    NaN coordinates are let through on purpose: they come from a diverged
    model, give a NaN loss, and the training loop then stops every rank with
    ``TrainingDivergedError``; raising here would stop only this rank in DDP.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise InputError(name, f"expected xyxy boxes of shape [N, 4], got {tuple(boxes.shape)}")
    if bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise InputError(name, "degenerate boxes: x1 < x0 or y1 < y0 (are they cxcywh, not xyxy?)")


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes.

    Returns ``(iou [N, M], union [N, M])``; the union is reused by
    :func:`generalized_box_iou`. Two zero-area boxes give 0/0 = NaN, as in the
    official code (DETR boxes come from a sigmoid and never have zero area).
    """
    area1 = box_area(boxes1)  # [N]
    area2 = box_area(boxes2)  # [M]
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]``.

    GIoU = IoU - (|C| - |A u B|) / |C| with C the smallest enclosing box; it
    lies in [-1, 1] and equals IoU when one box encloses the other.
    Raises ``InputError`` on degenerate boxes (``x1 < x0`` or ``y1 < y0``).
    """
    _check_xyxy(boxes1, "generalized_box_iou boxes1")
    _check_xyxy(boxes2, "generalized_box_iou boxes2")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)  # [N, M, 2]
    enclosing = wh[..., 0] * wh[..., 1]  # [N, M]
    return iou - (enclosing - union) / enclosing
