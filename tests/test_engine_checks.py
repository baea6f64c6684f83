"""The engine build's decisions that need no TensorRT (export/engine_checks.py), the
calibration session's error handling, and the short-batch padding of engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from export.calibrator import BatchStream, CalibrationSession, read_cache
from export.engine_checks import (
    ProfileShapes,
    calibration_batch,
    calibration_profile,
    check_calibration_images,
    default_calib_cache,
    dla_placement,
    profile_shapes,
    resolve_precision,
    timing_cache_outcome,
    validate_dla,
)
from runtime.backends.base import pad_batch
from runtime.errors import DataError, InputError
from runtime.files import file_sha256
from runtime.metadata import ModelMeta


def _meta(batch_size: int | None = None, with_mask: bool = False,
          precision: str = "fp32") -> ModelMeta:
    return ModelMeta(preset="detr-tiny", input_height=32, input_width=48, class_names=["a"],
                     label_map=[1], batch_size=batch_size, with_mask=with_mask,
                     precision=precision)


# ---- defect 1: calibration batch = the calibration profile's opt batch --------------------

def test_calibration_batch_defaults_to_the_profile_opt_batch() -> None:
    meta = _meta()
    profiles = profile_shapes(meta, 1, 16, 32)
    # Before: min(calib_batch=8, opt=16) = 8 images while TensorRT read 16.
    assert calibration_batch(meta, None, profiles) == 16
    assert calibration_batch(meta, 4, profiles) == 4  # --calib-batch gets its own profile
    shapes = calibration_profile(_meta(with_mask=True), 4)
    assert [(s.name, s.min, s.opt, s.max) for s in shapes] == [
        ("images", (4, 3, 32, 48), (4, 3, 32, 48), (4, 3, 32, 48)),
        ("mask", (4, 32, 48), (4, 32, 48), (4, 32, 48))]
    assert all(s.static for s in shapes)


def test_calibration_batch_on_a_fixed_batch_model_and_bad_values() -> None:
    fixed = _meta(batch_size=2)
    assert calibration_batch(fixed, None, profile_shapes(fixed)) == 2
    with pytest.raises(InputError, match="--calib-batch: the ONNX model has a fixed batch of 2"):
        calibration_batch(fixed, 8, profile_shapes(fixed))
    with pytest.raises(InputError, match="--calib-batch: must be positive"):
        calibration_batch(_meta(), 0, profile_shapes(_meta()))
    assert check_calibration_images(10, 4, "imgs") == 2
    with pytest.raises(InputError, match="imgs: 3 calibration image.* one batch of 4"):
        check_calibration_images(3, 4, "imgs")


# ---- defect 2: an error inside get_batch aborts the build ---------------------------------

def _feeds(fail_at: int) -> Iterator[dict[str, np.ndarray]]:
    for i in range(5):
        if i == fail_at:
            raise DataError("img_1.png", "cannot identify image file")
        yield {"images": np.zeros((2, 3, 32, 48), np.float32)}


def test_error_in_get_batch_is_kept_and_raised_after_the_build(tmp_path: Path) -> None:
    cache = tmp_path / "c.cache"
    session = CalibrationSession(BatchStream(_feeds(fail_at=1), 2), cache)
    # What the TensorRT callback does: guard(next batch) -> arrays, then [] on the error.
    first = session.guard(lambda: session.next_feed(["images"]), None)
    assert first is not None and first["images"].shape == (2, 3, 32, 48)
    assert session.guard(lambda: session.next_feed(["images"]), None) is None
    assert isinstance(session.error, DataError)
    # Calibration is over for TensorRT; any later callback returns the default at once.
    assert session.guard(lambda: session.next_feed(["images"]), "stop") == "stop"
    session.guard(lambda: session.write_cache(b"partial scales"), None)
    assert read_cache(cache) is None  # a failed calibration never writes its cache
    with pytest.raises(DataError, match="img_1.png: cannot identify image file"):
        session.raise_if_failed()


def test_successful_calibration_writes_cache_and_checks_input_names(tmp_path: Path) -> None:
    session = CalibrationSession(BatchStream(_feeds(fail_at=99), 2), tmp_path / "c.cache")
    assert session.guard(lambda: session.next_feed(["images", "mask"]), None) is None
    assert "no data for network input(s) ['mask']" in str(session.error)
    ok = CalibrationSession(BatchStream(_feeds(fail_at=99), 2), tmp_path / "c.cache")
    while ok.guard(lambda: ok.next_feed(["images"]), None) is not None:
        pass
    ok.guard(lambda: ok.write_cache(b"TRT-1001-EntropyCalibration2\n"), None)
    ok.raise_if_failed()
    assert ok.stream.batches_seen == 5 and ok.read_cache() == b"TRT-1001-EntropyCalibration2\n"


def test_ctrl_c_during_calibration_is_not_swallowed() -> None:
    def interrupted() -> Iterator[dict[str, np.ndarray]]:
        raise KeyboardInterrupt
        yield {}  # pragma: no cover - makes this a generator

    session = CalibrationSession(BatchStream(interrupted(), 1), None)
    assert session.guard(lambda: session.next_feed(["images"]), None) is None
    with pytest.raises(KeyboardInterrupt):
        session.raise_if_failed()


# ---- defect 3: the precision the header states is the engine's real one -------------------

@pytest.mark.parametrize("requested, onnx, expected", [
    (None, "fp32", "fp32"), (None, "fp16", "fp16"), (None, "int8", "int8"),
    ("fp16", "fp32", "fp16"), ("int8", "fp32", "int8"), ("fp16", "fp16", "fp16"),
])
def test_precision_resolution(requested: str | None, onnx: str, expected: str) -> None:
    assert resolve_precision(requested, onnx) == expected


@pytest.mark.parametrize("requested, onnx", [("fp32", "fp16"), ("fp32", "int8"),
                                             ("fp16", "int8"), ("int8", "fp16")])
def test_precision_that_a_strongly_typed_graph_cannot_give_is_refused(requested: str,
                                                                      onnx: str) -> None:
    with pytest.raises(InputError, match=f"already {onnx} .* cannot become {requested}"):
        resolve_precision(requested, onnx)


# ---- defect 4: a short last batch is padded up to the profile minimum ---------------------

def test_pad_batch_to_profile_minimum() -> None:
    images = np.ones((1, 3, 4, 5), np.float32)
    mask = np.zeros((1, 4, 5), bool)
    padded, padded_mask = pad_batch(images, mask, 3)
    assert padded.shape == (3, 3, 4, 5) and padded_mask is not None
    assert (padded[0] == 1).all() and (padded[1:] == 0).all()
    assert not padded_mask[0].any() and padded_mask[1:].all()  # padding images: all padding
    same, none_mask = pad_batch(images, None, 1)
    assert same is images and none_mask is None


# ---- defect 6: DLA -----------------------------------------------------------------------

def test_dla_needs_fp16_or_int8_and_a_static_profile() -> None:
    static = profile_shapes(_meta(), 2, 2, 2)
    validate_dla(0, False, 2, precision="fp16", profiles=static)
    validate_dla(1, True, 2, precision="int8", profiles=static)
    with pytest.raises(InputError, match="DLA runs FP16 or INT8 only, this build is fp32"):
        validate_dla(0, True, 2, precision="fp32", profiles=static)
    with pytest.raises(InputError, match=r"static shape .* \['images', 'mask'\]"):
        validate_dla(0, False, precision="fp16",
                     profiles=profile_shapes(_meta(with_mask=True), 1, 2, 4))
    assert ProfileShapes("x", (1,), (1,), (1,)).static


def test_dla_placement_reports_gpu_fallback() -> None:
    layers = [("conv1", True), ("relu1", True), ("softmax", False), ("topk", False)]
    on_gpu, summary = dla_placement(layers, gpu_fallback=True)
    assert on_gpu == 2 and summary.startswith("2 of 4 layers on DLA, 2 on the GPU")
    with pytest.raises(InputError, match="add --gpu-fallback"):
        dla_placement(layers, gpu_fallback=False)
    with pytest.raises(InputError, match="no layer of this network can run on DLA"):
        dla_placement([("a", False)], gpu_fallback=True)
    assert dla_placement([("a", True)], gpu_fallback=False) == (
        0, "1 of 1 layers on DLA, 0 on the GPU")


# ---- defect 7: timing cache mismatch, calibration cache keyed on the ONNX ------------------

def test_timing_cache_rejected_by_tensorrt_is_not_overwritten() -> None:
    assert timing_cache_outcome("t.cache", had_data=True, accepted=True) == (True, None)
    assert timing_cache_outcome("t.cache", had_data=False, accepted=True) == (True, None)
    write, warning = timing_cache_outcome("t.cache", had_data=True, accepted=False)
    assert not write and warning is not None and "left the file unchanged" in warning
    assert timing_cache_outcome(None, had_data=False, accepted=True) == (False, None)


def test_default_calibration_cache_follows_the_onnx_content(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"model v1")
    first = default_calib_cache(tmp_path / "m.engine", file_sha256(onnx))
    onnx.write_bytes(b"model v2")
    second = default_calib_cache(tmp_path / "m.engine", file_sha256(onnx))
    assert first != second and first.startswith(str(tmp_path / "m.engine.calib-"))
    assert first.endswith(".cache") and len(Path(first).name) == len("m.engine.calib-.cache") + 16
