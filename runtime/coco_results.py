"""Detections -> COCO results entries: the one writer of COCO results (numpy only).

``detr-edge predict`` (``predictions.json``), ``detr-edge eval``
(``detections.json``), the benchmarks and the INT8 search all write their
detections with :func:`coco_results`, so a results file scores the same in
pycocotools whichever command wrote it. Numbers are written at full precision:
rounding scores would create ties that reorder COCOeval's ranking, so a
rounded file would not score exactly what the evaluation reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from runtime.errors import InputError


class DetectionsLike(Protocol):
    """Anything shaped like ``runtime.decode.Detections``."""

    scores: np.ndarray  # float [N]
    labels: np.ndarray  # int [N], contiguous model labels 0..K-1
    boxes: np.ndarray  # float [N, 4], absolute pixel (x0, y0, x1, y1)


def coco_results(image_ids: Sequence[int], detections: Sequence[DetectionsLike],
                 label_map: Sequence[int], file_names: Sequence[str] | None = None
                 ) -> list[dict[str, Any]]:
    """Per-image detections as COCO results entries.

    image_ids: COCO image id of each entry of ``detections``. Boxes must be
    pixel xyxy in the *original* image (what COCO's ground truth uses).
    label_map: COCO category id of each contiguous label (``label_map[k]``).
    file_names: optional, one per image; added to its entries as ``file_name``.
    Returns ``[{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}]``
    with plain Python numbers (JSON-serialisable), in image then detection order.
    """
    if len(image_ids) != len(detections):
        raise InputError("detections", f"{len(detections)} detection sets for "
                         f"{len(image_ids)} image ids")
    if file_names is not None and len(file_names) != len(image_ids):
        raise InputError("file_names", f"{len(file_names)} names for {len(image_ids)} images")
    categories = np.asarray(label_map, dtype=np.int64)
    results: list[dict[str, Any]] = []
    for k, (image_id, det) in enumerate(zip(image_ids, detections)):
        extra = {"file_name": file_names[k]} if file_names is not None else {}
        for score, label, box in _rows(image_id, det, len(categories)):
            results.append({"image_id": int(image_id), "category_id": int(categories[label]),
                            "bbox": box, "score": score, **extra})
    return results


def _rows(image_id: int, det: DetectionsLike, num_classes: int
          ) -> zip[tuple[float, int, list[float]]]:
    """``(score, label, [x, y, w, h])`` of each detection of one image, checked."""
    where = f"detections of image {image_id}"
    scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)  # [N]
    labels = np.asarray(det.labels, dtype=np.int64).reshape(-1)  # [N]
    boxes = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4)  # [N, 4] xyxy
    if not len(scores) == len(labels) == len(boxes):
        raise InputError(where, f"{len(scores)} scores, {len(labels)} labels, {len(boxes)} boxes")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(where, f"label {int(labels.max())} outside the label map of "
                         f"{num_classes} classes")
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
        raise InputError(where, "non-finite score or box")
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # [N, 4]
    return zip(scores.tolist(), labels.tolist(), xywh.tolist())
