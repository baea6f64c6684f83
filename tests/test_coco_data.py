"""CocoDetection: label map, crowd/degenerate handling, targets, the bad-input
corpus in tests/data/bad/, and a hypothesis fuzz of the JSON validation."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detr.data.coco import CocoDetection, build_dataset
from detr.data.collate import collate_fn
from detr.data.synthetic import ShapesConfig, make_shapes_dataset
from detr.data.transforms import make_coco_transforms
from runtime.errors import DataError

BAD = Path(__file__).parent / "data" / "bad"
BAD_CASES = json.loads((BAD / "cases.json").read_text())["cases"]


def _write(tmp: Path, doc: Any, sizes: dict[str, tuple[int, int]]) -> tuple[Path, Path]:
    """Write ``doc`` as JSON and a grey image (w, h) per file name; return (folder, ann)."""
    folder = tmp / "images"
    folder.mkdir(exist_ok=True)
    for name, (w, h) in sizes.items():
        Image.new("RGB", (w, h), (90, 90, 90)).save(folder / name)
    ann = tmp / "ann.json"
    ann.write_text(json.dumps(doc))
    return folder, ann


def _doc() -> dict[str, Any]:
    return {
        "images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 60},
                   {"id": 2, "file_name": "b.png", "height": 50, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 5, 20, 10], "area": 150, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [50, 30, 20, 20], "iscrowd": 0},  # clipped
            {"id": 3, "image_id": 7, "category_id": 17, "bbox": [0, 0, 60, 40], "area": 2000, "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 3, "bbox": [5, 5, 0, 8], "area": 0, "iscrowd": 0},
            {"id": 5, "image_id": 7, "category_id": 17, "bbox": [70, 10, 5, 5], "area": 25, "iscrowd": 0},
        ],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}],
    }


@pytest.fixture()
def small(tmp_path: Path) -> CocoDetection:
    folder, ann = _write(tmp_path, _doc(), {"a.png": (60, 40), "b.png": (30, 50)})
    return CocoDetection(folder, ann)


def test_label_map_sorted_by_category_id(small: CocoDetection) -> None:
    assert small.label_map == [3, 17, 90]
    assert small.class_names == ["cat", "dog", "zebra"]
    assert small.num_classes == 3


def test_target_crowd_ignored_degenerate_dropped_boxes_clipped(small: CocoDetection) -> None:
    # ids are sorted: index 0 is image 2 (no objects), index 1 is image 7.
    image, target = small[1]
    assert isinstance(image, Image.Image) and image.size == (60, 40)
    # Kept: ann 1 (zebra) and ann 2 (cat, clipped to 60x40). Dropped: crowd ann 3,
    # zero-width ann 4, ann 5 entirely right of the image (zero width after clipping).
    torch.testing.assert_close(target["boxes"], torch.tensor([[10., 5., 30., 15.], [50., 30., 60., 40.]]))
    assert target["labels"].tolist() == [2, 0]
    assert target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["area"], torch.tensor([150.0, 400.0]))  # missing area = w*h
    assert target["iscrowd"].tolist() == [0, 0]
    assert target["image_id"].tolist() == [7]
    assert target["orig_size"].tolist() == [40, 60] and target["size"].tolist() == [40, 60]


def test_image_without_objects(small: CocoDetection) -> None:
    image, target = small[0]
    assert image.size == (30, 50)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"].tolist() == [2]


def test_transforms_give_normalised_cxcywh(tmp_path: Path) -> None:
    folder, ann = _write(tmp_path, _doc(), {"a.png": (60, 40), "b.png": (30, 50)})
    ds = CocoDetection(folder, ann, transforms=make_coco_transforms("val", scales=[80], max_size=200))
    image, target = ds[1]
    assert image.shape == (3, 80, 120) and image.dtype == torch.float32
    # Zebra box xyxy (10,5,30,15) on 60x40 -> cxcywh (20,10,20,10) / (60,40,60,40).
    torch.testing.assert_close(target["boxes"][0], torch.tensor([20 / 60, 10 / 40, 20 / 60, 10 / 40]))
    assert target["size"].tolist() == [80, 120] and target["orig_size"].tolist() == [40, 60]
    torch.testing.assert_close(target["area"][0], torch.tensor(150.0 * 4))
    _, empty = ds[0]
    assert empty["boxes"].shape == (0, 4)


def test_return_masks_from_polygon_and_bbox(tmp_path: Path) -> None:
    doc = _doc()
    doc["annotations"][0]["segmentation"] = [[10, 5, 30, 5, 30, 15, 10, 15]]
    folder, ann = _write(tmp_path, doc, {"a.png": (60, 40), "b.png": (30, 50)})
    _, target = CocoDetection(folder, ann, return_masks=True)[1]
    masks = target["masks"]
    assert masks.shape == (2, 40, 60) and masks.dtype == torch.bool
    assert masks[0, 10, 20] and not masks[0, 20, 20]
    assert masks[1, 35, 55] and not masks[1, 10, 10]  # no segmentation: filled bbox


def test_pycocotools_prints_silenced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, ann = _write(tmp_path, _doc(), {"a.png": (60, 40), "b.png": (30, 50)})
    CocoDetection(folder, ann)
    assert capsys.readouterr().out == ""


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        build_dataset(tmp_path / "nope", "val")
    with pytest.raises(DataError, match=r"not a dataset: no annotations/instances_val\.json"):
        build_dataset(tmp_path, "val")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("{}")
    with pytest.raises(DataError, match=r"val: image folder of split 'val' not found"):
        build_dataset(tmp_path, "val")


def test_synthetic_dataset_round_trip(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path, ShapesConfig(seed=2, num_train=4, num_val=2, image_size=96),
                        progress=False)
    doc = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    ds = build_dataset(tmp_path, "train")
    assert len(ds) == 4 and ds.label_map == [2, 5, 7, 11, 13, 17]
    image, target = ds[0]
    anns = [a for a in doc["annotations"] if a["image_id"] == 1]
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    torch.testing.assert_close(target["boxes"], expected)
    assert [ds.label_map[i] for i in target["labels"].tolist()] == [a["category_id"] for a in anns]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "train/000001.jpg")))


def test_collate_pads_and_masks(tmp_path: Path) -> None:
    folder, ann = _write(tmp_path, _doc(), {"a.png": (60, 40), "b.png": (30, 50)})
    ds = CocoDetection(folder, ann, transforms=make_coco_transforms("val", scales=[40], max_size=100))
    samples = [ds[0], ds[1]]  # [3, 66, 40] and [3, 40, 60]
    batch, targets = collate_fn(samples)
    assert batch.tensors.shape == (2, 3, 66, 60) and batch.mask.shape == (2, 66, 60)
    assert not batch.mask[0, :66, :40].any() and batch.mask[0, :, 40:].all()
    assert not batch.mask[1, :40, :60].any() and batch.mask[1, 40:, :].all()
    assert (batch.tensors[1, :, 40:, :] == 0).all()
    torch.testing.assert_close(batch.tensors[0, :, :66, :40], samples[0][0])
    assert targets[1] is samples[1][1]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c["ann_file"] for c in BAD_CASES])
def test_bad_corpus(case: dict[str, str]) -> None:
    ann = BAD / case["ann_file"]
    if case["stage"] == "load":
        with pytest.raises(DataError, match=case["match"]):
            CocoDetection(BAD / "images", ann)
    else:
        ds = CocoDetection(BAD / "images", ann)
        with pytest.raises(DataError, match=case["match"]):
            for i in range(len(ds)):
                ds[i]


# --- fuzz: any JSON document gives a dataset or a DataError, nothing else -------------

_json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(-(10 ** 400), 10 ** 400)
              | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
_json = st.recursive(_json_leaf, lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=12)
_KEYS = ["id", "image_id", "category_id", "bbox", "area", "iscrowd", "file_name", "name",
         "height", "width", "segmentation", "images", "annotations", "categories"]


def _check_any(doc: Any, return_masks: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        Image.new("RGB", (60, 40)).save(folder / "a.png")
        ann = Path(tmp) / "ann.json"
        ann.write_text(json.dumps(doc))
        try:
            ds = CocoDetection(folder, ann, return_masks=return_masks)
            for i in range(len(ds)):
                _, target = ds[i]
                assert target["boxes"].shape[1] == 4
        except DataError:
            pass


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_fuzz_random_json(doc: Any) -> None:
    _check_any(doc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_valid_document(data: st.DataObject) -> None:
    """Replace, delete or add one field somewhere in a valid document."""
    doc = _doc()
    doc["images"][1]["file_name"] = "a.png"
    doc = copy.deepcopy(doc)
    section = data.draw(st.sampled_from(["images", "annotations", "categories", None]))
    if section is None:
        target: dict[str, Any] = doc
    else:
        target = doc[section][data.draw(st.integers(0, len(doc[section]) - 1))]
    key = data.draw(st.sampled_from(_KEYS))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(_json)
    _check_any(doc)


def _masks_for(tmp_path: Path, segmentation: Any) -> torch.Tensor:
    doc = _doc()
    doc["annotations"][0]["segmentation"] = segmentation
    folder, ann = _write(tmp_path, doc, {"a.png": (60, 40), "b.png": (30, 50)})
    return CocoDetection(folder, ann, return_masks=True)[1][1]["masks"]


def test_masks_rle_string_and_counts(tmp_path: Path) -> None:
    from pycocotools import mask as coco_mask

    truth = np.zeros((40, 60), dtype=np.uint8)
    truth[5:15, 10:30] = 1
    rle = coco_mask.encode(np.asfortranarray(truth))
    masks = _masks_for(tmp_path, {"size": [40, 60], "counts": rle["counts"].decode()})
    np.testing.assert_array_equal(masks[0].numpy(), truth.astype(bool))
    flat = truth.ravel(order="F")  # uncompressed RLE: column-major run lengths, zeros first
    edges = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    masks = _masks_for(tmp_path, {"size": [40, 60], "counts": counts})
    np.testing.assert_array_equal(masks[0].numpy(), truth.astype(bool))


def _big_rle() -> str:
    from pycocotools import mask as coco_mask

    return coco_mask.encode(np.asfortranarray(np.ones((100, 100), np.uint8)))["counts"].decode()


_BIG_RLE = _big_rle()  # runs of a 100x100 mask: too many pixels for a 40x60 image


def test_masks_polygon_with_huge_vertex_is_clamped(tmp_path: Path) -> None:
    # Unclamped, pycocotools would rasterise a 1e9-pixel edge and exhaust memory.
    masks = _masks_for(tmp_path, [[10, 5, 1e9, 5, 30, 15, 10, 15]])
    assert masks[0, 10, 20] and masks.shape == (2, 40, 60)


@pytest.mark.parametrize(
    ("segmentation", "match"),
    [
        ([[1, 2, 3, 4]], "polygons must be lists of >= 3 finite"),
        ([[1, 2, 3, 4, 5, 6, 7]], "polygons must be lists of >= 3 finite"),
        ([["a", 1, 2, 3, 4, 5]], "polygons must be lists of >= 3 finite"),
        ([[10 ** 400, 1, 2, 3, 4, 5]], "integer of 401 digits"),  # the bounded JSON reader
        ({"size": [3, 3], "counts": [1, 2]}, r"RLE size \[3, 3\] is not the image size \[40, 60\]"),
        ({"size": [40, 60], "counts": [2400, 5]}, "add up to 2405 pixels"),
        ({"size": [40, 60], "counts": [-1, 5]}, "non-negative integers"),
        ({"size": [40, 60], "counts": _BIG_RLE}, "add up to 10000 pixels, the image has 2400"),
        ({"size": [40, 60], "counts": [100, 5]}, "add up to 105 pixels"),
        ({"size": [40, 60], "counts": "o" * 50}, "RLE counts string is malformed"),
        ({"size": [40, 60], "counts": "\x7f"}, "RLE counts string is malformed"),
        ({"size": [40, 60]}, "needs 'counts'"),
    ],
)
def test_masks_bad_segmentation(tmp_path: Path, segmentation: Any, match: str) -> None:
    prefix = "" if "digits" in match else "annotation 1 has a bad segmentation: .*"
    with pytest.raises(DataError, match=rf"{prefix}({match})"):
        _masks_for(tmp_path, segmentation)


_segmentation = (_json | st.lists(st.lists(st.floats(-1e12, 1e12) | st.integers(-5, 100), max_size=10),
                                  max_size=3)
                 | st.fixed_dictionaries({"size": st.sampled_from([[40, 60], [3, 3]]),
                                          "counts": st.lists(st.integers(-3, 3000), max_size=6)
                                          | st.text(alphabet="0123456789:;<=>?@ABCDEFGHIJKLMNOPQ"
                                                    "RSTUVWXYZ[]^_`abcdefghijklmno", max_size=12)}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_segmentation)
def test_fuzz_segmentation_with_masks(segmentation: Any) -> None:
    """pycocotools has no input checks (a huge vertex exhausts memory, oversized RLE
    runs write past the buffer); every segmentation must give a mask or a DataError."""
    doc = _doc()
    doc["images"][1]["file_name"] = "a.png"
    doc["annotations"][0]["segmentation"] = segmentation
    _check_any(doc, return_masks=True)


def test_dataset_pickles_for_dataloader_workers(small: CocoDetection) -> None:
    import pickle

    clone = pickle.loads(pickle.dumps(small))
    assert clone.label_map == small.label_map
    torch.testing.assert_close(clone[1][1]["boxes"], small[1][1]["boxes"])
