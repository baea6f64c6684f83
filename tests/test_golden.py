"""Golden check (export/golden.py) on a CPU: ONNX Runtime against ONNX Runtime, the
same model passes, a deliberately corrupted copy fails; the comparison is the one
export parity and the benchmark use (runtime/compare.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper
from tiny_onnx import make_tiny_onnx, tiny_meta

from export.golden import (
    TOLERANCES,
    golden_check,
    golden_inputs,
    onnxruntime_runner,
    tolerance_key,
)
from runtime.errors import InputError


def _corrupt(src: Path, dst: Path, initializer: str, delta: float) -> Path:
    """Copy of the model with ``delta`` added to one initializer (a stand-in for a
    miscompiled engine: same graph, wrong numbers)."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + delta,
                                                  initializer))
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("golden") / "m.onnx", tiny_meta(32, 48))


def test_same_model_passes_with_zero_error(tiny: Path) -> None:
    meta = tiny_meta(32, 48)
    ref = onnxruntime_runner(str(tiny))
    report = golden_check(ref, onnxruntime_runner(str(tiny)), meta, "fp32", num_images=5,
                          batch=2)
    assert report.passed, report.format()
    s = report.summary
    assert s["logits_max_abs"] == 0.0 and s["boxes_max_abs"] == 0.0
    assert s["matched_fraction"] == 1.0 and s["reference_detections"] == 15  # 3 per input
    assert [c.batch_size for c in report.cases] == [2, 2, 1]  # short last batch kept short
    assert report.to_dict()["passed"] is True and report.to_dict()["images"] == 5
    assert "PASS" in report.format() and "random normalised" in report.format()


def test_corrupted_boxes_fail(tiny: Path, tmp_path: Path) -> None:
    bad = _corrupt(tiny, tmp_path / "bad.onnx", "b_box", 0.8)  # boxes move (pre-sigmoid)
    report = golden_check(onnxruntime_runner(str(tiny)), onnxruntime_runner(str(bad)),
                          tiny_meta(32, 48), "int8", num_images=4, batch=4)
    assert not report.passed
    failures = report.failures()
    assert any(f.startswith("boxes max error") for f in failures), failures
    assert any("of detections matched at IoU 0.9" in f for f in failures), failures
    assert report.summary["matched_fraction"] == 0.0
    assert "FAIL (" in report.format()


def test_corrupted_logits_fail_on_mean_error_only(tiny: Path, tmp_path: Path) -> None:
    # +0.5 on every logit: softmax (and so the detections) unchanged, raw logits off.
    bad = _corrupt(tiny, tmp_path / "bad.onnx", "b_cls", 0.5)
    report = golden_check(onnxruntime_runner(str(tiny)), onnxruntime_runner(str(bad)),
                          tiny_meta(32, 48), "fp16", num_images=2, batch=2)
    assert report.failures() == ["logits mean error 0.5 > 0.1"]
    assert report.summary["matched_fraction"] == 1.0


def test_images_with_mask_and_fixed_batch_padding(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (40 + 20 * i, 30), (50 * i, 90, 10)).save(tmp_path / "imgs" / f"{i}.png")
    meta = tiny_meta(32, 48, batch_size=2, with_mask=True)
    model = make_tiny_onnx(tmp_path / "m.onnx", meta)
    source, batches = golden_inputs(meta, str(tmp_path / "imgs"), 3, 2)
    feeds = list(batches)
    assert source.startswith("images from") and [n for _, _, n in feeds] == [2, 1]
    last_feed, last_sizes, _ = feeds[1]
    assert last_feed["images"].shape[0] == 2 and last_feed["mask"][1].all()  # padded input
    assert last_sizes.shape == (2, 2)
    run = onnxruntime_runner(str(model))
    report = golden_check(run, run, meta, "fp32", str(tmp_path / "imgs"), 3, 2)
    assert report.passed and sum(c.batch_size for c in report.cases) == 3


def test_tolerance_selection_and_errors() -> None:
    assert tolerance_key("int8", "fp32") == "int8-calibrated"
    assert tolerance_key("int8", "int8") == "int8" and tolerance_key("fp16", "fp16") == "fp16"
    assert TOLERANCES["fp32"].boxes_max_abs < TOLERANCES["fp16"].boxes_max_abs
    with pytest.raises(InputError, match="--verify-images: must be positive"):
        golden_inputs(tiny_meta(), None, 0, 2)
    with pytest.raises(InputError, match="no golden tolerance"):
        golden_check(lambda f: [], lambda f: [], tiny_meta(), "bf16")
