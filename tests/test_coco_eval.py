"""COCO box metrics (detr/coco_eval.py) on a tiny hand-made ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from detr.coco_eval import AP_KEYS, coco_metrics, load_coco_gt
from runtime.coco_results import coco_results
from runtime.decode import Detections
from runtime.errors import DataError, InputError

# Non-contiguous category ids on purpose (contiguous label k -> LABEL_MAP[k]).
LABEL_MAP = [3, 7]
# Ground truth (image id, category id, xywh): COCO sizes are small < 32^2 <= medium
# < 96^2 <= large (by area), one small object only in image 2.
GT_OBJECTS = [
    (1, 3, [10.0, 10.0, 40.0, 40.0]),  # medium
    (1, 7, [60.0, 20.0, 100.0, 100.0]),  # large
    (2, 7, [5.0, 50.0, 50.0, 60.0]),  # medium
    (2, 3, [70.0, 10.0, 20.0, 20.0]),  # small
]


def _gt_dataset() -> dict:
    return {
        "images": [{"id": 1, "width": 200, "height": 128, "file_name": "a.png"},
                   {"id": 2, "width": 96, "height": 128, "file_name": "b.png"}],
        "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}],
        "annotations": [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}
                        for i, (img, cat, box) in enumerate(GT_OBJECTS)],
    }


def _perfect_detections(shift: float = 0.0) -> list[Detections]:
    """Detections equal to the ground truth (boxes moved right by ``shift`` px)."""
    per_image: dict[int, list[tuple[int, list[float]]]] = {1: [], 2: []}
    for img, cat, (x, y, w, h) in GT_OBJECTS:
        per_image[img].append((LABEL_MAP.index(cat), [x + shift, y, x + w + shift, y + h]))
    return [Detections(scores=np.linspace(0.9, 0.8, len(objs), dtype=np.float32),
                       labels=np.array([label for label, _ in objs], dtype=np.int64),
                       boxes=np.array([box for _, box in objs], dtype=np.float32))
            for objs in per_image.values()]


def test_coco_results_converts_boxes_and_labels() -> None:
    det = Detections(scores=np.array([0.5], dtype=np.float32), labels=np.array([1]),
                     boxes=np.array([[10.0, 20.0, 40.0, 25.0]], dtype=np.float32))
    results = coco_results([42], [det], LABEL_MAP)
    assert results == [{"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 5.0],
                        "score": pytest.approx(0.5)}]
    json.dumps(results)  # plain Python numbers only
    assert coco_results([1, 2], _perfect_detections(), LABEL_MAP)[0][
        "category_id"] == 3


@dataclass
class _PlainDetections:
    scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray


def test_any_object_with_the_detection_fields_is_accepted() -> None:
    det = _PlainDetections(np.array([0.9]), np.array([0]), np.array([[0.0, 0.0, 2.0, 3.0]]))
    assert coco_results([5], [det], LABEL_MAP)[0]["bbox"] == [0.0, 0.0, 2.0, 3.0]


def test_coco_results_rejects_bad_input() -> None:
    det = _PlainDetections(np.array([0.9]), np.array([2]), np.zeros((1, 4)))
    with pytest.raises(InputError, match="label 2 outside the label map of 2 classes"):
        coco_results([1], [det], LABEL_MAP)
    with pytest.raises(InputError, match="1 detection sets for 2 image ids"):
        coco_results([1, 2], [det], [1, 2, 3])
    nan_det = _PlainDetections(np.array([np.nan]), np.array([0]), np.zeros((1, 4)))
    with pytest.raises(InputError, match="non-finite"):
        coco_results([1], [nan_det], LABEL_MAP)


def test_perfect_detections_give_ap_one(capsys: pytest.CaptureFixture[str]) -> None:
    results = coco_results([1, 2], _perfect_detections(), LABEL_MAP)
    metrics = coco_metrics(_gt_dataset(), results)
    assert set(metrics) == set(AP_KEYS)
    assert all(isinstance(v, float) for v in metrics.values())
    for name in AP_KEYS:
        assert metrics[name] == pytest.approx(1.0), name
    assert capsys.readouterr().out == ""  # COCOeval's summary is not printed
    # Image 1 alone has no small object: COCOeval's -1 ("undefined") is kept.
    only_first = coco_metrics(_gt_dataset(), results, image_ids=[1])
    assert only_first["AP_S"] == -1.0 and only_first["AP"] == pytest.approx(1.0)


def test_shifted_box_lowers_ap() -> None:
    perfect = coco_metrics(_gt_dataset(),
                           coco_results([1, 2], _perfect_detections(), LABEL_MAP))
    # 10 px on a 40 px box: IoU 30*40 / (50*40) = 0.6 -> counts at IoU .5, not at .75.
    dets = _perfect_detections()
    dets[0].boxes[0] += np.array([10.0, 0.0, 10.0, 0.0], dtype=np.float32)
    shifted = coco_metrics(_gt_dataset(), coco_results([1, 2], dets, LABEL_MAP))
    assert shifted["AP"] < perfect["AP"]
    assert shifted["AP75"] < perfect["AP75"]
    assert shifted["AP50"] == pytest.approx(1.0)


def test_wrong_class_and_missing_image_lower_ap() -> None:
    dets = _perfect_detections()
    dets[0].labels[:] = 1 - dets[0].labels  # swap the two classes of image 1
    assert coco_metrics(_gt_dataset(),
                        coco_results([1, 2], dets, LABEL_MAP))["AP"] < 0.5
    only_first = coco_results([1], _perfect_detections()[:1], LABEL_MAP)
    assert coco_metrics(_gt_dataset(), only_first)["AP"] < 1.0
    assert coco_metrics(_gt_dataset(), only_first, image_ids=[1])["AP"] == pytest.approx(1.0)


def test_empty_results_give_zeros() -> None:
    assert coco_metrics(_gt_dataset(), []) == {name: 0.0 for name in AP_KEYS}
    empty = [Detections(scores=np.zeros(0, np.float32), labels=np.zeros(0, np.int64),
                        boxes=np.zeros((0, 4), np.float32))] * 2
    assert coco_metrics(_gt_dataset(), coco_results([1, 2], empty, LABEL_MAP)) == {
        name: 0.0 for name in AP_KEYS}


def test_ground_truth_as_path_or_coco_object(tmp_path: Path) -> None:
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(_gt_dataset()))
    results = coco_results([1, 2], _perfect_detections(shift=3.0), LABEL_MAP)
    from_path = coco_metrics(path, results)
    from_str = coco_metrics(str(path), results)
    from_obj = coco_metrics(load_coco_gt(path), results)
    assert from_path == from_str == from_obj
    assert 0.0 < from_path["AP"] < 1.0
    assert results[0]["bbox"] == [13.0, 10.0, 40.0, 40.0] and "area" not in results[0]


def test_bad_ground_truth_and_results_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.json: file not found"):
        coco_metrics(tmp_path / "missing.json", [])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="annotation file is not JSON"):
        coco_metrics(bad, [])
    no_bbox = _gt_dataset()
    del no_bbox["annotations"][1]["bbox"]
    with pytest.raises(DataError, match=r"annotation #1 lacks \['bbox'\]"):
        coco_metrics(no_bbox, [])
    with pytest.raises(DataError, match="missing list 'categories'"):
        coco_metrics({"images": [], "annotations": []}, [])
    stray = [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(InputError, match=r"image ids \[99\] are not in the ground truth"):
        coco_metrics(_gt_dataset(), stray)


def test_missing_area_and_iscrowd_default_like_the_dataset_reader() -> None:
    gt = _gt_dataset()
    for ann in gt["annotations"]:
        del ann["area"], ann["iscrowd"]
    results = coco_results([1, 2], _perfect_detections(), LABEL_MAP)
    assert coco_metrics(gt, results) == coco_metrics(_gt_dataset(), results)
    assert coco_metrics(load_coco_gt(gt), results)["AP_S"] == pytest.approx(1.0)
    assert "area" not in gt["annotations"][0]  # the caller's dict is not modified


def test_module_does_not_import_torch() -> None:
    code = ("import sys; import detr.coco_eval; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
