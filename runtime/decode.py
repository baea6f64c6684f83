"""Set decoding: DETR's per-query outputs -> detections (numpy only).

DETR predicts a fixed set of Q slots; each slot has K+1 class logits (the last
column is "no object") and one normalised ``(cx, cy, w, h)`` box. Decoding is
a softmax, a choice of class per slot, and a box rescale -- no NMS.

Two modes (DETR paper, Sec. 4 and the official ``PostProcess``):
- default: slots whose top class is no-object are dropped; the others keep
  their best real class with its probability (the paper's plain output).
- ``second_best=True``: every slot keeps its best *real* class with its
  probability, even when no-object wins. This is the official ``PostProcess``
  output used for COCO AP and gives about +2 AP (low-confidence extra boxes
  raise recall).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import InputError

if TYPE_CHECKING:
    from runtime.metadata import ModelMeta
    from runtime.preprocess import Batch

# Names of the two decodings, for reports and metrics files.
OFFICIAL_POSTPROCESS = "official PostProcess (every slot keeps its best real class)"
DROP_NO_OBJECT = "drop no-object slots"


def decoding_protocol(second_best: bool) -> str:
    """The report name of a decoding: COCO AP is counted with the official one."""
    return OFFICIAL_POSTPROCESS if second_best else DROP_NO_OBJECT


@dataclass
class Detections:
    """Detections of one image, sorted by decreasing score.

    scores: float32 [N]; labels: int64 [N] contiguous model labels 0..K-1;
    boxes: float32 [N, 4] absolute pixel ``(x0, y0, x1, y1)``.
    ``class_names`` / ``category_ids`` ([N] each) are filled in by the
    ``Detector`` from the model metadata (empty when decoding directly).
    """

    scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    class_names: list[str] = field(default_factory=list)
    category_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (max subtracted first; computed in float64).

    Infinite logits are clipped to +-1e30 first so ``inf - inf`` cannot make NaN.
    """
    x = np.clip(np.asarray(logits, dtype=np.float64), -1e30, 1e30)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def box_cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x0, y0, x1, y1), same units."""
    cx, cy, w, h = np.moveaxis(np.asarray(boxes), -1, 0)
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def decode(logits: np.ndarray, boxes: np.ndarray, target_sizes: np.ndarray, *,
           second_best: bool = False, score_threshold: float = 0.0,
           top_k: int | None = None) -> list[Detections]:
    """Turn model outputs into per-image detections.

    logits: [B, Q, K+1] (last column = no-object); boxes: [B, Q, 4] normalised
    cxcywh; target_sizes: [B, 2] (h, w) in pixels of the region the normalised
    boxes refer to. Returns B :class:`Detections` with xyxy pixel boxes (not
    clipped), scores >= ``score_threshold``, sorted by score, at most ``top_k``.

    Slots with a NaN logit or a non-finite box are dropped: a numerically broken
    model output (e.g. an FP16 overflow) must not reach COCO JSON, where NaN is
    not valid, or the drawing code. Such a model then simply scores low.
    """
    logits, boxes, target_sizes = _checked(logits, boxes, target_sizes, top_k)
    B, Q, _ = logits.shape  # batch, queries, classes + 1

    prob = softmax(logits)  # [B, Q, K+1]
    real = prob[..., :-1]  # [B, Q, K]
    scores = real.max(axis=-1)  # [B, Q] best real-class probability
    labels = real.argmax(axis=-1).astype(np.int64)  # [B, Q]
    if second_best:
        keep = np.ones((B, Q), dtype=bool)
    else:
        # Drop slots where no-object beats every real class (ties go to the object).
        keep = prob[..., -1] <= scores
    keep &= scores >= score_threshold

    h, w = target_sizes[:, 0].astype(np.float64), target_sizes[:, 1].astype(np.float64)
    scale = np.stack([w, h, w, h], axis=-1)[:, None, :]  # [B, 1, 4]
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN boxes are dropped below
        xyxy = box_cxcywh_to_xyxy(boxes.astype(np.float64)) * scale  # [B, Q, 4] pixels
        xyxy32 = xyxy.astype(np.float32)  # what is returned: must be finite as float32
    keep &= ~np.isnan(logits).any(axis=-1) & np.isfinite(xyxy32).all(axis=-1)

    out = []
    for b in range(B):
        idx = np.flatnonzero(keep[b])
        # Stable sort: equal scores keep query order, so results are deterministic.
        idx = idx[np.argsort(-scores[b, idx], kind="stable")]
        if top_k is not None:
            idx = idx[:top_k]
        out.append(Detections(
            scores=np.ascontiguousarray(scores[b, idx], dtype=np.float32),
            labels=np.ascontiguousarray(labels[b, idx], dtype=np.int64),
            boxes=np.ascontiguousarray(xyxy32[b, idx]).reshape(-1, 4),
        ))
    return out


def _checked(logits: Any, boxes: Any, target_sizes: Any, top_k: int | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``decode``'s inputs as arrays, their shapes and values checked."""
    logits = np.asarray(logits)
    boxes = np.asarray(boxes)
    target_sizes = np.asarray(target_sizes)
    if logits.ndim != 3 or logits.shape[2] < 2:
        raise InputError("logits", f"expected shape [B, Q, K+1] with K >= 1, got {logits.shape}")
    B, Q, _ = logits.shape  # batch, queries, classes + 1
    if boxes.shape != (B, Q, 4):
        raise InputError("boxes", f"expected shape {(B, Q, 4)}, got {boxes.shape}")
    if target_sizes.shape != (B, 2):
        raise InputError("target_sizes", f"expected shape {(B, 2)}, got {target_sizes.shape}")
    if top_k is not None and top_k < 0:
        raise InputError("top_k", f"must be >= 0, got {top_k}")
    if not (np.issubdtype(target_sizes.dtype, np.number)
            and np.all(np.isfinite(target_sizes)) and np.all(target_sizes >= 0)):
        raise InputError("target_sizes", "must be finite sizes >= 0 in pixels")
    return logits, boxes, target_sizes


def target_sizes(batch: Batch, meta: ModelMeta) -> np.ndarray:
    """float64 [B, 2] (h, w) in ORIGINAL pixels that the model's normalised boxes refer to.

    With a mask (``meta.with_mask``) the boxes are relative to the valid region (= the
    resized original image), so the original size; without it they are relative to the
    whole canvas ``(meta.input_height, meta.input_width)``, whose size in original pixels
    is canvas * original / resized, per axis (the two sides of a resize round
    differently). The canvas comes from ``meta``, not from ``batch.images``: a
    ``--fused-preprocess`` model's batch holds the raw frames.
    """
    if meta.with_mask:
        return batch.orig_sizes.astype(np.float64)
    canvas = np.array([meta.input_height, meta.input_width], dtype=np.float64)  # (H, W)
    return canvas[None, :] * batch.orig_sizes / np.maximum(batch.valid_sizes, 1)


def clip_to_images(detections: list[Detections], orig_sizes: np.ndarray) -> None:
    """Clip each image's xyxy pixel boxes in place to its ``(h, w)`` in ``orig_sizes`` [B, 2]."""
    for det, (h, w) in zip(detections, orig_sizes):
        np.clip(det.boxes[:, 0::2], 0, w, out=det.boxes[:, 0::2])
        np.clip(det.boxes[:, 1::2], 0, h, out=det.boxes[:, 1::2])


def decode_images(logits: np.ndarray, boxes: np.ndarray, batch: Batch, meta: ModelMeta,
                  **options: Any) -> list[Detections]:
    """:func:`decode` of a model's outputs on ``batch`` (``runtime.preprocess`` or
    ``runtime.fused`` output for ``meta``'s model) into ORIGINAL image pixels, boxes
    clipped to each image: what the Detector, evaluation and the benchmarks report.

    logits [B, Q, K+1], boxes [B, Q, 4] normalised cxcywh; ``options`` go to
    :func:`decode` (``second_best``, ``score_threshold``, ``top_k``)."""
    dets = decode(logits, boxes, target_sizes(batch, meta), **options)
    clip_to_images(dets, batch.orig_sizes)
    return dets
