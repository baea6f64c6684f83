"""Accuracy of one backend: COCO AP columns, deltas vs PyTorch FP32, output parity.

Detections come from ``runtime.decode`` (``decode_images``), the AP from
``runtime.coco_results`` + ``detr.coco_eval``
(pycocotools), the same code the runtime and ``detr-edge eval`` use.

Parity compares raw outputs on the SAME preprocessed canvas with
``runtime.compare`` (one implementation for export parity, the engine golden
check and this suite):
- ``logits_max_abs`` / ``logits_mean_abs``: |logits - logits_ref| over [N, Q, K+1];
- ``boxes_max_abs`` / ``boxes_mean_abs``: same for the normalised cxcywh boxes;
- ``matched_fraction``: detections (paper decoding) matched one to one with the
  same class and IoU >= 0.9, over max(reference count, backend count). ``None``
  when neither detects anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detr.coco_eval import AP_KEYS, coco_metrics
from runtime.coco_results import coco_results
from runtime.compare import OutputComparison, add_detections, add_errors, summarize
from runtime.decode import Detections


def coco_ap(gt: dict[str, Any], image_ids: Sequence[int], detections: Sequence[Detections],
            label_map: Sequence[int]) -> dict[str, float]:
    """COCO box AP (keys ``AP_KEYS``, 0..1) of ``detections`` on the images ``image_ids``.

    ``gt`` is the annotation JSON; only the images ``image_ids`` are evaluated.
    """
    results = coco_results(list(image_ids), list(detections), list(label_map))
    metrics = coco_metrics(gt, results, image_ids=list(image_ids))
    return {k: float(metrics[k]) for k in AP_KEYS}


def ap_deltas(acc: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Row AP minus reference AP per key (both in 0..1); keys where either side is
    COCO's -1 (no ground truth in that area range) are left out."""
    return {k: acc[k] - reference[k] for k in AP_KEYS
            if k in acc and k in reference and acc[k] >= 0 and reference[k] >= 0}


def parity_metrics(ref_logits: np.ndarray, ref_boxes: np.ndarray, logits: np.ndarray,
                   boxes: np.ndarray, ref_dets: Sequence[Detections],
                   dets: Sequence[Detections]) -> dict[str, float | None]:
    """Output parity of a backend against the reference (``runtime.compare``, the
    same comparison as export parity and the engine golden check).

    logits: [N, Q, K+1]; boxes: [N, Q, 4] normalised cxcywh, N = all eval images.
    """
    case = OutputComparison("all images", int(logits.shape[0]), "eval images")
    add_errors(case, (ref_logits, ref_boxes), (logits, boxes))
    add_detections(case, ref_dets, dets)
    return summarize([case])
