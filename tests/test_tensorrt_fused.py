"""Fused-preprocessing models (uint8 NHWC frames in) on the TensorRT path, for the parts
that need no TensorRT: the backend's I/O planning (runtime/backends/tensorrt_io.py),
the engine build's profile and refusals (export/engine_checks.py) and the golden
check's inputs (export/golden.py), the last run for real with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_onnx import make_tiny_onnx, tiny_meta

from export.engine_checks import check_fused_calibration, profile_shapes
from export.fused_preprocess import fuse_preprocess
from export.golden import golden_check, golden_inputs, onnxruntime_runner
from export.onnx_meta import write_meta
from runtime.backends.model_io import TensorSpec
from runtime.backends.tensorrt_io import buffer_shape, plan_inputs, prepare_feed
from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta

F32, U8, BOOL = np.dtype(np.float32), np.dtype(np.uint8), np.dtype(bool)


def _fused_meta(with_mask: bool = False, batch_size: int | None = None) -> ModelMeta:
    meta = tiny_meta(64, 64, with_mask=with_mask, batch_size=batch_size)
    return meta.replace(extra={"fused_preprocess": {"source_height": 48, "source_width": 80}})


def _tensors(images: tuple[np.dtype, tuple[int, ...]], mask: bool = False
             ) -> dict[str, TensorSpec]:
    out = {"images": TensorSpec("images", True, images[0], images[1]),
           "logits": TensorSpec("logits", False, F32, (-1, 6, 4)),
           "boxes": TensorSpec("boxes", False, F32, (-1, 6, 4))}
    if mask:
        out["mask"] = TensorSpec("mask", True, BOOL, (-1, 64, 64))
    return out


def test_plain_engine_takes_float_canvases_and_mask() -> None:
    meta = tiny_meta(64, 64, with_mask=True)
    plan = plan_inputs(meta, _tensors((F32, (-1, 3, 64, 64)), mask=True), (1, 8), "e")
    assert (plan.layout, plan.item_shape, plan.min_batch, plan.max_batch, plan.has_mask) == \
        ("canvas", (3, 64, 64), 1, 8, True)
    feed, n = prepare_feed(plan, meta, np.zeros((2, 3, 64, 64), np.float64), None)
    assert n == 2 and feed["images"].dtype == F32
    assert feed["mask"].shape == (2, 64, 64) and not feed["mask"].any()  # no padding given


def test_fused_engine_takes_uint8_frames_copied_as_they_are() -> None:
    meta = _fused_meta()
    plan = plan_inputs(meta, _tensors((U8, (-1, 48, 80, 3))), (2, 4), "e")
    assert (plan.layout, plan.item_shape, plan.images_dtype) == ("frames", (48, 80, 3), U8)
    frame = np.random.default_rng(0).integers(0, 256, (1, 48, 80, 3), dtype=np.uint8)
    feed, n = prepare_feed(plan, meta, frame, None)
    assert n == 1 and set(feed) == {"images"}
    assert feed["images"].shape == (2, 48, 80, 3) and feed["images"].dtype == U8  # padded
    np.testing.assert_array_equal(feed["images"][0], frame[0])
    assert not feed["images"][1].any()
    with pytest.raises(InputError, match=r"expects uint8 \[B, 48, 80, 3\]"):
        prepare_feed(plan, meta, np.zeros((1, 3, 64, 64), np.float32), None)
    with pytest.raises(InputError, match="maximum batch size 4"):
        prepare_feed(plan, meta, np.zeros((5, 48, 80, 3), np.uint8), None)


def test_fused_with_mask_engine_has_no_mask_input() -> None:
    meta = _fused_meta(with_mask=True, batch_size=2)
    plan = plan_inputs(meta, _tensors((U8, (2, 48, 80, 3))), None, "e")
    assert plan.batch_size == 2 and not plan.has_mask
    with pytest.raises(ModelFormatError, match="mask in the graph.*has 'mask' input"):
        plan_inputs(meta, _tensors((U8, (2, 48, 80, 3)), mask=True), None, "e")


@pytest.mark.parametrize(("meta", "images", "match"), [
    (tiny_meta(64, 64), (U8, (-1, 48, 80, 3)),
     (r"engine input 'images' has shape \[-1, 48, 80, 3\] but the header says float "
     r"\[B, 3, 64, 64\]")),
    (_fused_meta(), (F32, (-1, 3, 64, 64)), r"says uint8 \[B, 48, 80, 3\]"),
    # right shape, float dtype
    (_fused_meta(), (F32, (-1, 48, 80, 3)), "'images' is float32 but the header says uint8"),
])
def test_engine_from_another_onnx_is_refused(meta, images, match) -> None:
    with pytest.raises(ModelFormatError, match=match):
        plan_inputs(meta, _tensors(images), (1, 8), "model.engine")


def test_buffers_sized_for_the_max_batch() -> None:
    spec = TensorSpec("images", True, U8, (-1, 48, 80, 3))
    assert buffer_shape(spec, (8, 48, 80, 3), 8) == (8, 48, 80, 3)
    with pytest.raises(ModelFormatError, match="unresolved"):
        buffer_shape(TensorSpec("logits", False, F32, (-1, -1, 4)), (8, -1, 4), 8)


def test_engine_profile_of_a_fused_model_is_nhwc_uint8_frames() -> None:
    shapes = profile_shapes(_fused_meta(with_mask=True), 1, 2, 4)
    assert [(s.name, s.min, s.max) for s in shapes] == [
        ("images", (1, 48, 80, 3), (4, 48, 80, 3))]  # no mask input: it is in the graph
    plain = profile_shapes(tiny_meta(64, 64, with_mask=True), 1, 2, 4)
    assert [s.name for s in plain] == ["images", "mask"] and plain[0].opt == (2, 3, 64, 64)
    with pytest.raises(InputError, match="calibration feeds float canvases"):
        check_fused_calibration(_fused_meta())
    check_fused_calibration(tiny_meta(64, 64))  # plain: fine


@pytest.mark.parametrize("with_mask", [False, True])
def test_golden_check_feeds_frames_to_a_fused_model(tmp_path: Path, with_mask: bool) -> None:
    """The build's golden check on a fused ONNX: uint8 frames, run for real (ORT vs ORT:
    zero error), with a short last batch padded for a fixed-batch graph."""
    meta = tiny_meta(64, 64, with_mask=with_mask, batch_size=2)
    plain = make_tiny_onnx(tmp_path / "p.onnx", meta, weight_scale=0.05)
    fused, fused_meta = fuse_preprocess(onnx.load(plain), meta, 48, 80)
    path = tmp_path / "fused.onnx"
    onnx.save(write_meta(fused, fused_meta), path)
    source, batches = golden_inputs(fused_meta, None, 3, 2)
    feeds = list(batches)
    assert source == "random frames" and [n for _, _, n in feeds] == [2, 1]
    assert all(set(f) == {"images"} and f["images"].dtype == U8 and
               f["images"].shape == (2, 48, 80, 3) for f, _, _ in feeds)
    want_sizes = [[38, 64]] * 2 if with_mask else [[64, 64]] * 2  # valid region vs canvas
    np.testing.assert_array_equal(feeds[0][1], want_sizes)
    run = onnxruntime_runner(str(path))
    report = golden_check(run, run, fused_meta, "fp32", num_images=3, batch=2)
    assert report.passed and report.summary["logits_max_abs"] == 0.0
