"""Paired bootstrap over images (export/int8/paired_bootstrap.py) and COCO AP on a
weighted image set (detr/coco_resample.py), on hand-computable data."""

from __future__ import annotations

import numpy as np
import pytest

from export.int8.paired_bootstrap import Metric, paired_bootstrap, resample_counts
from runtime.errors import InputError


def _mean_metric(values: list[float]) -> Metric:
    v = np.asarray(values, float)
    return lambda counts: counts @ v / counts.sum(axis=1)


def test_counts_draw_n_images_with_replacement() -> None:
    counts = resample_counts(5, 1000, seed=1)
    assert counts.shape == (1000, 5) and np.all(counts.sum(axis=1) == 5)
    # Each image is drawn Binomial(5, 1/5) times: mean 1, variance 0.8.
    assert counts.mean() == pytest.approx(1.0, abs=0.05)
    assert counts.var() == pytest.approx(0.8, abs=0.08)
    assert np.array_equal(counts, resample_counts(5, 1000, seed=1))
    with pytest.raises(InputError, match="replicates"):
        resample_counts(5, 1)


def test_se_of_a_mean_difference_matches_the_formula() -> None:
    # Per-image differences d = a - b = [0, 0, 0, 4]: mean 1. The bootstrap SE of a
    # mean is the plug-in sd / sqrt(N) = sqrt(((1+1+1+9)/4)) / 2 = sqrt(3)/2 = 0.866.
    a = [1.0, 2.0, 3.0, 8.0]
    b = [1.0, 2.0, 3.0, 4.0]
    result = paired_bootstrap(_mean_metric(a), _mean_metric(b), 4, replicates=20000, seed=0)
    assert result.diff == pytest.approx(1.0)
    assert result.se == pytest.approx(np.sqrt(3) / 2, rel=0.03)
    assert result.num_images == 4 and result.replicates == 20000


def test_pairing_removes_what_both_configurations_share() -> None:
    # b = a + 0.5 on every image: the images differ a lot, the configurations do
    # not, so the paired difference has no noise at all.
    a = [10.0, 50.0, 90.0, 30.0, 70.0]
    b = [x + 0.5 for x in a]
    result = paired_bootstrap(_mean_metric(a), _mean_metric(b), 5, replicates=500)
    assert result.diff == pytest.approx(-0.5) and result.se == pytest.approx(0.0, abs=1e-12)


# ---- COCO AP on weighted image sets --------------------------------------------------------

pytest.importorskip("pycocotools")


def _gt(num_images: int) -> dict:
    images = [{"id": 10 + i, "file_name": f"{i}.png", "height": 100, "width": 100}
              for i in range(num_images)]
    anns = []
    for i in range(num_images):
        for j, cat in enumerate((1, 3)):
            x = 10 + 30 * j + i
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cat,
                         "bbox": [x, 20.0, 20.0, 25.0], "area": 500.0, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}


def _results(gt: dict, seed: int) -> list[dict]:
    """Noisy copies of the ground truth, some misses and some false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt["annotations"]:
        if rng.random() < 0.2:
            continue  # a miss
        box = np.asarray(ann["bbox"]) + rng.normal(0, 2.0, 4)
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                    "bbox": box.tolist(), "score": float(rng.random())})
        if rng.random() < 0.3:  # a false positive elsewhere
            out.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [60.0, 60.0, 15.0, 15.0], "score": float(rng.random())})
    return out


def test_weighted_ap_with_unit_weights_is_cocoeval_ap() -> None:
    from detr.coco_eval import coco_metrics
    from detr.coco_resample import coco_matches, weighted_ap

    gt = _gt(12)
    ids = [im["id"] for im in gt["images"]]
    for seed in range(3):
        results = _results(gt, seed)
        expected = 100 * coco_metrics(gt, results)["AP"]
        got = weighted_ap(coco_matches(gt, results, ids), np.ones((1, len(ids))))
        assert got[0] == pytest.approx(expected, abs=1e-9)


def test_integer_weights_equal_a_dataset_with_duplicated_images() -> None:
    from detr.coco_eval import coco_metrics
    from detr.coco_resample import coco_matches, weighted_ap

    gt = _gt(6)
    results = _results(gt, 7)
    ids = [im["id"] for im in gt["images"]]
    weights = np.array([[2.0, 0.0, 1.0, 3.0, 0.0, 1.0]])
    # The same multiset written out: image i copied weights[i] times under new ids.
    dup = {"images": [], "annotations": [], "categories": gt["categories"]}
    dup_results = []
    for i, image_id in enumerate(ids):
        for copy in range(int(weights[0, i])):
            new_id = 1000 * (copy + 1) + image_id
            dup["images"].append({**gt["images"][i], "id": new_id})
            dup["annotations"] += [{**a, "id": len(dup["annotations"]) + k + 1,
                                    "image_id": new_id}
                                   for k, a in enumerate(a for a in gt["annotations"]
                                                         if a["image_id"] == image_id)]
            dup_results += [{**r, "image_id": new_id} for r in results
                            if r["image_id"] == image_id]
    expected = 100 * coco_metrics(dup, dup_results)["AP"]
    got = weighted_ap(coco_matches(gt, results, ids), weights)[0]
    assert got == pytest.approx(expected, abs=1e-6)
