"""``detr-edge predict`` end to end through the CLI dispatcher (tiny ONNX, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny_onnx import BOXES, make_tiny_onnx, tiny_meta

from runtime.cli import main
from runtime.errors import InputError
from runtime.predict import assign_image_ids, collect_images


def _images(folder, names_sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in names_sizes.items():
        Image.new("RGB", (w, h), (90, 120, 200)).save(folder / name)


def test_predict_writes_coco_results_and_images(tmp_path, capsys) -> None:
    model = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta(64, 64, with_mask=True),
                           weight_scale=0.0)
    _images(tmp_path / "imgs", {"000000000042.jpg": (200, 100), "000000000007.png": (64, 64)})
    _images(tmp_path / "imgs" / "sub", {"000000000005.png": (30, 90)})
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model), "--images", str(tmp_path / "imgs"),
                 "--out", str(out), "--threshold", "0.5", "--top-k", "2"])
    assert code == 0
    assert "6 detections in 3 images" in capsys.readouterr().out  # 3 object slots, top-k 2
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 6
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    assert sorted(by_image) == [5, 7, 42]  # numeric COCO stems become image ids
    first = by_image[42][0]  # best slot: class 0 -> category 3, box BOXES[0] of 200x100
    assert first["category_id"] == 3
    cx, cy, w, h = BOXES[0]
    np.testing.assert_allclose(first["bbox"], [(cx - w / 2) * 200, (cy - h / 2) * 100,
                                               w * 200, h * 100], atol=0.05)
    assert {r["category_id"] for r in results} <= {3, 7, 11}
    images = json.loads((out / "images.json").read_text())
    assert {(i["id"], i["width"], i["height"]) for i in images} == {
        (42, 200, 100), (7, 64, 64), (5, 30, 90)}
    annotated = sorted(p.name for p in (out / "annotated").iterdir())
    assert annotated == ["000000000005.png", "000000000007.png", "000000000042.jpg"]
    with Image.open(out / "annotated" / "000000000042.jpg") as drawn:
        assert drawn.size == (200, 100)
        assert np.abs(np.asarray(drawn, dtype=int) - [90, 120, 200]).max() > 60  # boxes drawn


def test_predict_results_load_in_pycocotools(tmp_path) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco")
    model = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta(), weight_scale=0.0)
    _images(tmp_path / "imgs", {"a.png": (80, 40), "b.png": (40, 80)})
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), "--images", str(tmp_path / "imgs" / "a.png"),
                 str(tmp_path / "imgs" / "b.png"), "--out", str(out), "--threshold", "0",
                 "--second-best", "--no-draw"]) == 0
    images = json.loads((out / "images.json").read_text())
    gt = coco_mod.COCO()
    gt.dataset = {"images": images, "annotations": [],
                  "categories": [{"id": i, "name": n} for i, n in
                                 zip([3, 7, 11], ["circle", "square", "triangle"])]}
    gt.createIndex()
    dt = gt.loadRes(str(out / "predictions.json"))
    assert len(dt.getAnnIds()) == 12  # second-best: every one of 6 queries per image
    assert not (out / "annotated").exists()


def test_bad_image_is_one_line_exit_2(tmp_path, capsys) -> None:
    model = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta())
    _images(tmp_path / "imgs", {"good.png": (32, 32)})
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    code = main(["predict", "--model", str(model), "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "broken.jpg" in err and err.startswith(
        "detr-edge predict: error:")
    code = main(["predict", "--model", str(tmp_path / "nope.onnx"), "--images",
                 str(tmp_path / "imgs"), "--out", str(tmp_path / "out")])
    assert code == 2 and "nope.onnx" in capsys.readouterr().err


def test_collect_and_ids(tmp_path) -> None:
    _images(tmp_path, {"b.png": (5, 5), "a.jpg": (5, 5)})
    (tmp_path / "notes.txt").write_text("x")
    files = collect_images([tmp_path])
    assert [f.name for f in files] == ["a.jpg", "b.png"]
    assert assign_image_ids(files) == [1, 2]
    with pytest.raises(InputError, match="missing: no such file"):
        collect_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no images"):
        collect_images([tmp_path / "empty"])
