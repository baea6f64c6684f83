"""Deployment keeps the accuracy the model was trained with, on non-square
images of mixed sizes: for a checkpoint recorded as trained with padded batches, the
default export (mask input + training resize rule) run by the runtime gives the AP of
``eval`` (official protocol), and the benchmark's reference IS ``eval``'s figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks.accuracy import coco_ap
from detr.evaluate import EvalConfig, evaluate_checkpoint
from runtime.compare import match_detections
from runtime.decode import Detections

DEMO = Path(__file__).resolve().parent.parent / "detr" / "assets" / "detr-tiny-shapes.pth"
RULE = {"shorter": 128, "max_size": 192, "padded": True}  # as recorded by training
CANVAS = 192  # export canvas: every rule size (<= 192 a side) fits


@pytest.fixture(scope="module")
def padded_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Mixed-size portrait/landscape shapes images, and the demo model's weights in a
    checkpoint that records padded training at shorter side 128, longer <= 192."""
    import detr
    from detr.data.synthetic import ShapesConfig, make_shapes_dataset

    root = tmp_path_factory.mktemp("deploy")
    make_shapes_dataset(root / "data", ShapesConfig(
        seed=5, num_train=2, num_val=10, variable_size=(120, 240), max_objects=3,
        size_band_probs=(0.0, 0.6, 0.4), max_large=1), progress=False)
    loaded = detr.load_checkpoint(DEMO)
    ckpt = root / "padded.pth"
    detr.save_checkpoint(ckpt, loaded.model, loaded.config, loaded.class_names,
                         loaded.label_map, extra={"training_resize": RULE})
    from export.onnx_export import ExportConfig, export_onnx

    art = root / "artifacts"
    export_onnx(ExportConfig(checkpoint=str(ckpt), out=str(art / "model_fp32.onnx"),
                             height=CANVAS, width=CANVAS))  # mask: the default, from RULE
    return {"data": root / "data", "checkpoint": ckpt, "onnx": art / "model_fp32.onnx",
            "artifacts": art}


def _gt(data: Path) -> dict:
    return json.loads((data / "annotations" / "instances_val.json").read_text())


def test_images_are_mixed_and_non_square(padded_setup):
    sizes = {(im["height"], im["width"]) for im in _gt(padded_setup["data"])["images"]}
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes) and len(sizes) > 5


def test_default_export_runtime_matches_eval(padded_setup):
    from runtime.detector import Detector

    data = padded_setup["data"]
    ref = evaluate_checkpoint(padded_setup["checkpoint"], EvalConfig(data=str(data),
                                                                     progress=False))
    assert ref.protocol["resize"].startswith("training rule per image: shorter side 128")
    assert ref.metrics["AP50"] > 0.2  # a real model: the comparison below means something

    gt = _gt(data)
    paths = [data / "val" / im["file_name"] for im in gt["images"]]
    with Detector(padded_setup["onnx"], backend="onnxruntime", providers="cpu") as det:
        meta = det.meta
        dets = det.detect(paths, second_best=True)
    assert meta.with_mask and (meta.resize_shorter, meta.resize_max) == (128, 192)
    from runtime.preprocess import preprocess

    valid = preprocess(paths, meta).valid_sizes  # the rule, not a fit of the 192 canvas
    assert valid.min(axis=1).max() == 128 and valid.max() <= 192
    assert preprocess(paths, meta.replace(resize_shorter=None)).valid_sizes.max(axis=1).min() == 192
    ap = coco_ap(gt, [im["id"] for im in gt["images"]], dets, meta.label_map)
    assert abs(ap["AP"] - ref.metrics["AP"]) <= 0.005, (ap, ref.metrics)
    assert abs(ap["AP50"] - ref.metrics["AP50"]) <= 0.005, (ap, ref.metrics)
    # The detections themselves agree (same class, IoU >= 0.9) for the confident ones.
    matched = total = 0
    by_image: dict[int, list[dict]] = {}
    for d in ref.detections:
        by_image.setdefault(d["image_id"], []).append(d)
    for im, det in zip(gt["images"], dets):
        mine = [d for d in by_image[im["id"]] if d["score"] >= 0.3]
        if not mine:
            continue
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)])
        labels = np.array([meta.label_map.index(d["category_id"]) for d in mine])
        ref_det = Detections(np.array([d["score"] for d in mine]), labels, boxes)
        matched, total = matched + match_detections(ref_det, det), total + len(ref_det)
    assert total > 0 and matched / total >= 0.9, (matched, total)


@pytest.mark.slow
def test_benchmark_reference_is_eval(padded_setup, tmp_path):
    from benchmarks.suite import BenchmarkConfig, run_benchmark

    data = padded_setup["data"]
    ref = evaluate_checkpoint(padded_setup["checkpoint"], EvalConfig(data=str(data),
                                                                     progress=False))
    rep = run_benchmark(BenchmarkConfig(
        checkpoint=str(padded_setup["checkpoint"]), data=str(data),
        artifacts=str(padded_setup["artifacts"]), runs=1, warmup=0, max_images=None,
        out=str(tmp_path / "bench"), measure_memory=False, progress=False), log=lambda _: None)
    assert rep.reference["accuracy"] == ref.metrics
    assert rep.reference["protocol"] == ref.protocol
    assert rep.settings["with_mask"] and rep.settings["resize"] == [128, 192]
    ort = rep.row("onnxruntime", "fp32")
    assert abs(ort.delta_vs_trained["AP"]) <= 0.005, ort.delta_vs_trained
    assert abs(ort.delta_vs_canvas["AP"]) <= 0.005, ort.delta_vs_canvas
    text = (tmp_path / "bench" / "report.md").read_text()
    assert "Reference = PyTorch FP32 (cpu) as trained: training rule per image" in text
    assert "official PostProcess" in text and "dAP canvas" in text
    doc = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert doc["reference"]["accuracy"] == ref.metrics
    assert "delta_vs_trained" in doc["rows"][2] and "delta_vs_canvas" in doc["rows"][2]


@pytest.mark.slow
def test_cli_defaults_follow_training(padded_setup, tmp_path, capsys):
    from export.onnx_meta import load_onnx, read_meta
    from runtime.cli import main

    ckpt, data = str(padded_setup["checkpoint"]), str(padded_setup["data"])
    assert main(["eval", "--checkpoint", ckpt, "--data", data, "--max-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "shorter side 128, longer <= 192, mask, 192x192 canvas" in out
    assert "decoding: official PostProcess" in out
    assert main(["eval", "--checkpoint", ckpt, "--data", data, "--max-images", "2",
                 "--drop-no-object"]) == 0
    assert "decoding: drop no-object slots" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", ckpt, "--data", data, "--max-images", "2",
                 "--second-best"]) == 0  # the old flag is accepted: the default now
    assert "decoding: official PostProcess" in capsys.readouterr().out

    # The demo model never saw padding: its default export has no mask input, fits the canvas.
    demo = tmp_path / "demo.onnx"
    assert main(["export-onnx", "--checkpoint", str(DEMO), "--out", str(demo),
                 "--height", "128", "--width", "128"]) == 0
    meta = read_meta(load_onnx(demo), demo)
    assert not meta.with_mask and meta.resize_shorter is None
    assert meta.extra["training_resize"]["padded"] is False
    # --no-mask overrides a padded checkpoint's default.
    plain = tmp_path / "plain.onnx"
    assert main(["export-onnx", "--checkpoint", ckpt, "--out", str(plain), "--height", "128",
                 "--width", "128", "--no-mask"]) == 0
    assert not read_meta(load_onnx(plain), plain).with_mask
