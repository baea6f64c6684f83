"""The synthetic shapes dataset: determinism, COCO structure, size bands, counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr.data.synthetic import ShapesConfig, make_shapes_dataset, render_image
from runtime.errors import InputError


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes50")
    make_shapes_dataset(out, ShapesConfig(seed=3, num_train=50, num_val=4), progress=False)
    return out


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    cfg = ShapesConfig(seed=11, num_train=6, num_val=2, image_size=96)
    make_shapes_dataset(tmp_path / "a", cfg, progress=False)
    make_shapes_dataset(tmp_path / "b", cfg, progress=False)
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert len(da) == 6 + 2 + 2
    assert da == db
    make_shapes_dataset(tmp_path / "c", ShapesConfig(seed=12, num_train=6, num_val=2,
                                                      image_size=96), progress=False)
    dc = _digest(tmp_path / "c")
    assert dc["train/000001.jpg"] != da["train/000001.jpg"]
    assert dc["annotations/instances_train.json"] != da["annotations/instances_train.json"]


def test_train_and_val_differ(dataset50: Path) -> None:
    assert (dataset50 / "train/000001.jpg").read_bytes() != (dataset50 / "val/000001.jpg").read_bytes()


def test_categories_non_contiguous(dataset50: Path) -> None:
    doc = _load(dataset50, "train")
    cats = doc["categories"]
    assert [c["id"] for c in cats] == [2, 5, 7, 11, 13, 17]
    assert [c["name"] for c in cats] == ["circle", "square", "triangle", "star", "ellipse", "cross"]
    used = {a["category_id"] for a in doc["annotations"]}
    assert used == {2, 5, 7, 11, 13, 17}


def test_coco_area_bands_all_present(dataset50: Path) -> None:
    areas = np.array([a["area"] for a in _load(dataset50, "train")["annotations"]])
    small, large = (areas < 32 ** 2).sum(), (areas > 96 ** 2).sum()
    medium = len(areas) - small - large
    # Each band should hold a real share, not a handful, for AP_S/M/L to be meaningful.
    assert small >= 0.1 * len(areas) and medium >= 0.1 * len(areas) and large >= 10, \
        (small, medium, large)


def test_object_counts_and_boxes(dataset50: Path) -> None:
    doc = _load(dataset50, "train")
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    counts = {i: 0 for i in sizes}
    ann_ids = [a["id"] for a in doc["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for a in doc["annotations"]:
        counts[a["image_id"]] += 1
        x, y, w, h = a["bbox"]
        iw, ih = sizes[a["image_id"]]
        assert a["iscrowd"] == 0
        assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= iw and y + h <= ih
        assert 0 < a["area"] <= w * h  # visible pixel count inside the visible box
    assert min(counts.values()) >= 1 and max(counts.values()) <= 20
    assert max(counts.values()) >= 8  # uniform 1..20 over 50 images reaches well past a few


def test_images_match_json(dataset50: Path) -> None:
    doc = _load(dataset50, "val")
    for im in doc["images"]:
        with Image.open(dataset50 / "val" / im["file_name"]) as f:
            assert f.size == (im["width"], im["height"])
            assert f.format == "JPEG"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_annotations_are_visible_extent(index: int) -> None:
    """bbox/area describe the VISIBLE pixels; no object is hidden beyond 70%."""
    cfg = ShapesConfig(seed=5, image_size=128, max_objects=20)
    img, objects, ids = render_image(cfg, "train", index)
    img2, objects2, _ = render_image(cfg, "train", index)
    np.testing.assert_array_equal(img, img2)
    assert objects == objects2
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert 1 <= len(objects) <= 20
    for obj in objects:
        ys, xs = np.nonzero(ids == obj["instance"])
        assert obj["area"] == ys.size
        assert obj["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert obj["area"] >= 0.3 * obj["full_area"]
    # Background pixels exist and carry no instance.
    assert (ids == 0).any()


def test_max_objects_and_variable_size(tmp_path: Path) -> None:
    cfg = ShapesConfig(seed=1, num_train=12, num_val=0, max_objects=3,
                       variable_size=(64, 160), image_format="png")
    make_shapes_dataset(tmp_path, cfg, progress=False)
    doc = _load(tmp_path, "train")
    shapes = {(im["width"], im["height"]) for im in doc["images"]}
    assert len(shapes) > 3  # sizes vary
    for im in doc["images"]:
        assert 64 <= im["width"] <= 160 and 64 <= im["height"] <= 160
        with Image.open(tmp_path / "train" / im["file_name"]) as f:
            assert f.format == "PNG" and f.size == (im["width"], im["height"])
    per_image: dict[int, int] = {}
    for a in doc["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert len(per_image) == 12 and max(per_image.values()) <= 3
    assert _load(tmp_path, "val")["images"] == []


def test_custom_category_subset(tmp_path: Path) -> None:
    cfg = ShapesConfig(num_train=3, num_val=0, image_size=64,
                       categories=((40, "star"), (3, "circle")))
    make_shapes_dataset(tmp_path, cfg, progress=False)
    doc = _load(tmp_path, "train")
    assert [c["id"] for c in doc["categories"]] == [3, 40]
    assert {a["category_id"] for a in doc["annotations"]} <= {3, 40}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"image_size": 8}, "image_size: must be >= 32"),
        ({"max_objects": 0}, "max_objects: must be in 1..100"),
        ({"categories": ((1, "hexagon"),)}, "unknown shape 'hexagon'"),
        ({"categories": ((1, "star"), (1, "circle"))}, "must be unique"),
        ({"categories": ()}, "at least one category"),
        ({"image_format": "gif"}, "must be 'jpg' or 'png'"),
        ({"variable_size": (100, 50)}, "variable_size"),
        ({"num_train": -1}, "must be >= 0"),
    ],
)
def test_config_validation(tmp_path: Path, changes: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_shapes_dataset(tmp_path, ShapesConfig(**changes), progress=False)


def test_make_dataset_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runtime.cli import main

    out = tmp_path / "ds"
    rc = main(["make-dataset", "shapes", "--out", str(out), "--num-train", "3", "--num-val", "2",
               "--image-size", "64", "--max-objects", "4", "--seed", "9"])
    assert rc == 0
    assert str(out) in capsys.readouterr().out
    assert len(_load(out, "train")["images"]) == 3 and len(_load(out, "val")["images"]) == 2
    rc = main(["make-dataset", "shapes", "--out", str(out), "--image-size", "10"])
    assert rc == 2
    assert "image_size: must be >= 32" in capsys.readouterr().err


def test_generation_does_not_import_torch(tmp_path: Path) -> None:
    """The generator is numpy + pillow only, usable on a runtime-only install."""
    import subprocess
    import sys

    code = ("import sys; from detr.data.synthetic import ShapesConfig, make_shapes_dataset; "
            f"make_shapes_dataset({str(tmp_path)!r}, ShapesConfig(num_train=1, num_val=0, "
            "image_size=64), progress=False); sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert (tmp_path / "train" / "000001.jpg").is_file()
