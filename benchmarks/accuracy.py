"""Accuracy of one backend: COCO AP columns, deltas vs PyTorch FP32, output parity.

Detections come from ``runtime.decode`` and the AP from ``detr.coco_eval``
(pycocotools), the same code the runtime and ``detr-edge eval`` use.

Parity compares raw outputs on the SAME preprocessed canvas:
- ``logits_max_abs`` / ``logits_mean_abs``: |logits - logits_ref| over [N, Q, K+1];
- ``boxes_max_abs`` / ``boxes_mean_abs``: same for the normalised cxcywh boxes;
- ``matched_fraction``: of the reference's detections (paper decoding), the
  fraction for which the backend has a detection of the same class with
  IoU >= 0.9 (greedy, one-to-one, by decreasing reference score). ``None``
  when the reference detects nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.rows import AP_KEYS
from runtime.decode import Detections, decode
from runtime.metadata import ModelMeta
from runtime.preprocess import Batch, box_reference_sizes

MATCH_IOU = 0.9  # a detection "matches" when IoU >= this and the class is the same


def decode_clipped(logits: np.ndarray, boxes: np.ndarray, batch: Batch,
                   meta: ModelMeta, second_best: bool = True) -> list[Detections]:
    """``runtime.decode`` into original pixels, boxes clipped to the image.

    ``second_best`` defaults to the official PostProcess (every slot keeps its
    best real class), the decoding COCO AP is reported with."""
    sizes = box_reference_sizes(batch, meta.with_mask)
    dets = decode(logits, boxes, sizes, second_best=second_best)
    for det, (h, w) in zip(dets, batch.orig_sizes):
        det.boxes[:, 0::2] = np.clip(det.boxes[:, 0::2], 0, w)
        det.boxes[:, 1::2] = np.clip(det.boxes[:, 1::2], 0, h)
    return dets


def coco_ap(gt: dict[str, Any], image_ids: Sequence[int], detections: Sequence[Detections],
            label_map: Sequence[int]) -> dict[str, float]:
    """COCO box AP (keys ``AP_KEYS``, 0..1) of ``detections`` on the images ``image_ids``.

    ``gt`` is the annotation JSON; only the images ``image_ids`` are evaluated.
    """
    from detr.coco_eval import coco_metrics, detections_to_coco_results

    results = detections_to_coco_results(list(image_ids), list(detections), list(label_map))
    metrics = coco_metrics(gt, results, image_ids=list(image_ids))
    return {k: float(metrics[k]) for k in AP_KEYS}


def ap_deltas(acc: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Row AP minus reference AP per key (both in 0..1); keys where either side is
    COCO's -1 (no ground truth in that area range) are left out."""
    return {k: acc[k] - reference[k] for k in AP_KEYS
            if k in acc and k in reference and acc[k] >= 0 and reference[k] >= 0}


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N, 4] and [M, 4] xyxy boxes -> [N, M]."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)  # [N, M]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matched_counts(reference: Detections, other: Detections,
                   iou_threshold: float = MATCH_IOU) -> tuple[int, int]:
    """(matched, total) reference detections that ``other`` reproduces (same class,
    IoU >= threshold), greedy one-to-one in decreasing reference score."""
    n = len(reference)
    if n == 0 or len(other) == 0:
        return 0, n
    iou = box_iou_xyxy(reference.boxes.astype(np.float64), other.boxes.astype(np.float64))
    iou[reference.labels[:, None] != other.labels[None, :]] = -1.0
    used = np.zeros(len(other), dtype=bool)
    matched = 0
    for i in np.argsort(-reference.scores, kind="stable"):
        cand = np.where(used, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            used[j] = True
            matched += 1
    return matched, n


def parity_metrics(ref_logits: np.ndarray, ref_boxes: np.ndarray, logits: np.ndarray,
                   boxes: np.ndarray, ref_dets: Sequence[Detections],
                   dets: Sequence[Detections]) -> dict[str, float | None]:
    """Output parity of a backend against the reference (see module docstring).

    logits: [N, Q, K+1]; boxes: [N, Q, 4] normalised cxcywh, N = all eval images.
    """
    dl = np.abs(logits.astype(np.float64) - ref_logits.astype(np.float64))
    db = np.abs(boxes.astype(np.float64) - ref_boxes.astype(np.float64))
    matched = total = 0
    for r, o in zip(ref_dets, dets):
        m, n = matched_counts(r, o)
        matched += m
        total += n
    return {"logits_max_abs": float(dl.max()), "logits_mean_abs": float(dl.mean()),
            "boxes_max_abs": float(db.max()), "boxes_mean_abs": float(db.mean()),
            "matched_fraction": matched / total if total else None,
            "reference_detections": float(total)}
