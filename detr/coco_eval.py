"""COCO box AP for DETR detections (numpy + pycocotools, no torch).

Used by evaluation and the accuracy benchmarks for every backend (PyTorch,
ONNX Runtime, TensorRT) on COCO results written by ``runtime.coco_results``;
it never imports torch. pycocotools (the ``train`` extra) is imported only
when a ground truth is loaded.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

from runtime import json_limits
from runtime.errors import BackendUnavailableError, DataError, InputError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

# The box AP figures, in the order of COCOeval.stats[0:6] for iouType "bbox": the keys of
# every metrics dict (``detr-edge eval``, benchmark rows, the INT8 search).
AP_KEYS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")

CocoGroundTruth = Union[str, "os.PathLike[str]", "COCO", dict]


def load_coco_gt(coco_gt: CocoGroundTruth) -> COCO:
    """A pycocotools ``COCO`` from a path, a dataset dict or a ``COCO``.

    Annotations without ``area`` get the box area and without ``iscrowd`` get
    0, like ``detr.data.coco`` reads them (COCOeval would raise a bare
    KeyError); this happens on a copy, the caller's data is left untouched,
    and a complete ``COCO`` is returned as is. Loading messages of pycocotools
    are swallowed. Raises ``DataError`` for a missing or malformed file,
    ``BackendUnavailableError`` without pycocotools.
    """
    coco_cls = _coco_class()
    if isinstance(coco_gt, coco_cls):
        dataset, where = coco_gt.dataset, "ground truth COCO object"
    elif isinstance(coco_gt, dict):
        dataset, where = coco_gt, "ground truth dict"
    elif isinstance(coco_gt, (str, os.PathLike)):
        where = os.fspath(coco_gt)
        dataset = json_limits.read_json_file(where, what="annotation file")
    else:
        raise InputError("coco_gt", f"expected a path, dict or COCO, got {type(coco_gt).__name__}")
    _check_dataset(dataset, where)
    filled = _with_defaults(dataset)
    if filled is dataset and isinstance(coco_gt, coco_cls):
        return coco_gt
    coco = coco_cls()
    coco.dataset = filled
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(coco_gt: CocoGroundTruth, results: Sequence[dict[str, Any]], *,
                 image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO box AP of ``results`` (``runtime.coco_results.coco_results``).

    coco_gt: annotation file path, dataset dict or pycocotools ``COCO``.
    image_ids: evaluate only these images (default: every ground-truth image,
    so images without results count as misses).
    Returns floats for ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``AP_S``,
    ``AP_M``, ``AP_L`` in [0, 1]; like COCOeval, a size range without any
    ground-truth object gives -1.0. No results at all gives 0.0 everywhere.
    COCOeval's printed summary is captured, not shown.
    """
    gt = load_coco_gt(coco_gt)
    if len(results) == 0:
        # pycocotools' loadRes crashes on an empty list; nothing detected = AP 0.
        return {name: 0.0 for name in AP_KEYS}
    known = set(gt.getImgIds())
    unknown = sorted({int(r["image_id"]) for r in results} - known)
    if unknown:
        raise InputError("results", f"image ids {unknown[:5]} are not in the ground truth")
    from pycocotools.cocoeval import COCOeval

    # loadRes adds 'area', 'id', 'iscrowd', 'segmentation' to each dict: copy them first.
    copies = [dict(r) for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt.loadRes(copies)
        evaluator = COCOeval(gt, detections, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[: len(AP_KEYS)]]
    return {name: (value if math.isfinite(value) else 0.0)
            for name, value in zip(AP_KEYS, stats)}


def _coco_class() -> type[COCO]:
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise BackendUnavailableError(
            "pycocotools is not installed (pip install 'detr-edge[device]', or "
            "'detr-edge[train]' on a training machine)") from e
    return COCO


def _check_dataset(dataset: Any, where: str) -> None:
    """Fail early, naming the field, where COCOeval would raise a bare KeyError."""
    if not isinstance(dataset, dict):
        raise DataError(where, "top level must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DataError(where, f"missing list {key!r}")
    for i, ann in enumerate(dataset["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(where, f"annotation #{i} is not an object")
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
        if missing:
            raise DataError(where, f"annotation #{i} lacks {missing}")
        if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4):
            raise DataError(where, f"annotation #{i} bbox must be [x, y, w, h]")


def _with_defaults(dataset: dict) -> dict:
    """``dataset`` itself if every annotation has ``area`` and ``iscrowd``, else a
    copy whose annotations get ``area = w * h`` and ``iscrowd = 0`` where absent."""
    if all("area" in a and "iscrowd" in a for a in dataset["annotations"]):
        return dataset
    annotations = [{"area": float(a["bbox"][2]) * float(a["bbox"][3]), "iscrowd": 0, **a}
                   for a in dataset["annotations"]]
    return {**dataset, "annotations": annotations}
