"""COCO box AP on a *weighted* image set, for bootstrap resampling over images.

pycocotools matches detections to ground truth image by image
(``COCOeval.evaluate``); only the accumulation (precision/recall over all
images of a category) mixes images. So the matches are computed once, and the
AP of any multiset of the images (image i counted ``w_i`` times) is the same
accumulation with every detection and ground-truth box of image i weighted by
``w_i``. With every weight 1 this is exactly ``COCOeval.accumulate`` +
``summarize``'s AP@[.5:.95] (area "all", 100 detections per image), which
:func:`detr.coco_eval.coco_metrics` returns; with integer weights it equals the
AP of the dataset in which image i appears ``w_i`` times (up to the order of
exactly tied scores).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detr.coco_eval import CocoGroundTruth, load_coco_gt


@dataclass(frozen=True)
class CategoryMatches:
    """One category's detections over all images, sorted by score (descending)."""

    image: np.ndarray  # int [D]: position (0..N-1) of each detection's image
    tp: np.ndarray  # bool [T, D]: true positive at IoU threshold t (not ignored)
    fp: np.ndarray  # bool [T, D]: false positive (not ignored)
    num_gt: np.ndarray  # float [N]: non-ignored ground-truth boxes per image


@dataclass(frozen=True)
class CocoMatches:
    """Per-category matches of one set of detections on N images (see module doc)."""

    categories: list[CategoryMatches]
    num_images: int
    rec_thresholds: np.ndarray  # [101] COCO recall points


def coco_matches(coco_gt: CocoGroundTruth, results: Sequence[dict[str, Any]],
                 image_ids: Sequence[int]) -> CocoMatches:
    """Match ``results`` (``runtime.coco_results`` format) to the ground truth
    of ``image_ids`` with pycocotools; image i of the weights is ``image_ids[i]``."""
    from pycocotools.cocoeval import COCOeval

    gt = load_coco_gt(coco_gt)
    ids = [int(i) for i in image_ids]
    position = {image_id: k for k, image_id in enumerate(ids)}
    with contextlib.redirect_stdout(io.StringIO()):
        dets = gt.loadRes([dict(r) for r in results]) if results else None
        ev = COCOeval(gt, dets if dets is not None else gt.loadRes(_no_detection(gt, ids)),
                      iouType="bbox")
        ev.params.imgIds = sorted(ids)
        ev.evaluate()
    p = ev.params
    num_areas, num_imgs, max_det = len(p.areaRng), len(p.imgIds), p.maxDets[-1]
    categories = []
    for k in range(len(p.catIds)):
        # area range 0 = "all"; COCOeval.evalImgs is laid out [category, area, image].
        evals = [e for e in ev.evalImgs[k * num_areas * num_imgs:(k * num_areas + 1) * num_imgs]
                 if e is not None]
        num_gt = np.zeros(len(ids))
        for e in evals:
            num_gt[position[e["image_id"]]] = float(np.count_nonzero(e["gtIgnore"] == 0))
        if not evals:
            categories.append(CategoryMatches(np.zeros(0, int), np.zeros((len(p.iouThrs), 0), bool),
                                              np.zeros((len(p.iouThrs), 0), bool), num_gt))
            continue
        scores = np.concatenate([e["dtScores"][:max_det] for e in evals])
        order = np.argsort(-scores, kind="mergesort")  # COCOeval's order, ties by image
        image = np.concatenate([[position[e["image_id"]]] * len(e["dtScores"][:max_det])
                                for e in evals]).astype(int)[order]
        matched = np.concatenate([e["dtMatches"][:, :max_det] for e in evals], axis=1)[:, order]
        ignored = np.concatenate([e["dtIgnore"][:, :max_det] for e in evals], axis=1)[:, order]
        categories.append(CategoryMatches(image=image, tp=(matched != 0) & ~ignored,
                                          fp=(matched == 0) & ~ignored, num_gt=num_gt))
    return CocoMatches(categories, len(ids), np.asarray(p.recThrs))


def _no_detection(gt: Any, ids: list[int]) -> list[dict[str, Any]]:
    """One zero-score box far outside every image: loadRes needs a non-empty list."""
    cat = gt.getCatIds()[0]
    return [{"image_id": ids[0], "category_id": cat, "bbox": [-1e6, -1e6, 1.0, 1.0],
             "score": 0.0}]


def weighted_ap(matches: CocoMatches, weights: np.ndarray) -> np.ndarray:
    """AP@[.5:.95] in COCO points (0..100) of each weighted image set.

    weights: ``[R, N]`` non-negative image counts (``np.ones((1, N))`` = the
    plain AP). Returns ``[R]``. As in COCOeval, a category without ground truth
    in a replicate does not count, and AP is 0 when no category has any.
    """
    w = np.asarray(weights, float)
    total = np.zeros(w.shape[0])
    count = np.zeros(w.shape[0])
    thresholds = matches.rec_thresholds
    for cat in matches.categories:
        npos = w @ cat.num_gt  # [R]
        has_gt = npos > 0
        if not has_gt.any():
            continue
        dw = w[:, cat.image]  # [R, D] weight of each detection
        tp = np.cumsum(dw[:, None, :] * cat.tp[None], axis=2)  # [R, T, D]
        fp = np.cumsum(dw[:, None, :] * cat.fp[None], axis=2)
        recall = tp / np.where(has_gt, npos, 1.0)[:, None, None]
        precision = tp / (tp + fp + np.spacing(1))
        # Precision envelope: the best precision at this recall or any higher one.
        envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
        q = np.zeros(recall.shape[:2] + (len(thresholds),))  # [R, T, 101]
        for r in np.flatnonzero(has_gt):
            for t in range(recall.shape[1]):
                idx = np.searchsorted(recall[r, t], thresholds, side="left")
                ok = idx < recall.shape[2]
                q[r, t, ok] = envelope[r, t, idx[ok]]
        total += np.where(has_gt, q.mean(axis=(1, 2)), 0.0)
        count += has_gt
    return 100.0 * np.where(count > 0, total / np.maximum(count, 1), 0.0)
