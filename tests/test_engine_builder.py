"""Engine builder: everything that does not need the TensorRT library is tested
for real (profiles, argument validation, the TensorRT 10/11 precision decision,
timing/calibration cache files, calibration batching); the build itself skips
with "TensorRT not installed"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.calibrator import BatchStream, read_cache
from export.engine_builder import EngineBuildConfig, build_engine
from export.engine_checks import (
    batch_range,
    profile_shapes,
    read_cache_file,
    validate_dla,
    write_cache_file,
)
from export.int8.calib_data import fixed_size_batches, iter_feeds
from export.trt_compat import check_precision_request, features_for, parse_version
from runtime.backends.trt_import import import_tensorrt
from runtime.errors import BackendUnavailableError, InputError
from runtime.metadata import ModelMeta


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendUnavailableError:
        return False
    return True


TRT10 = features_for("10.13.0.35")
TRT11 = features_for("11.0.0.12")


def _meta(batch_size: int | None = 1, with_mask: bool = False) -> ModelMeta:
    return ModelMeta(preset="detr-tiny", input_height=96, input_width=128,
                     class_names=["a", "b"], label_map=[1, 2], batch_size=batch_size,
                     with_mask=with_mask)


# ---- optimization profiles ---------------------------------------------------------------

def test_fixed_batch_profile_defaults_to_the_model_batch() -> None:
    assert batch_range(_meta(batch_size=2), None, None, None) == (2, 2, 2)
    assert batch_range(_meta(batch_size=2), 2, 2, 2) == (2, 2, 2)


def test_fixed_batch_model_rejects_another_batch() -> None:
    with pytest.raises(InputError, match="fixed batch of 1.*--max-batch"):
        batch_range(_meta(batch_size=1), None, None, 8)


def test_dynamic_batch_defaults_and_clamping() -> None:
    meta = _meta(batch_size=None)
    assert batch_range(meta, None, None, None) == (1, 4, 8)
    assert batch_range(meta, 2, None, 3) == (2, 3, 3)  # default opt 4 clamped to max
    assert batch_range(meta, 16, None, None) == (16, 16, 16)  # default max follows min
    assert batch_range(meta, 1, 1, 1) == (1, 1, 1)


@pytest.mark.parametrize("lo, opt, hi, match", [
    (4, 2, 8, "min <= opt <= max"),
    (1, 9, 8, "min <= opt <= max"),
    (8, None, 4, "min <= opt <= max"),
    (0, None, None, "--min-batch: must be positive"),
    (None, -1, None, "--opt-batch: must be positive"),
])
def test_dynamic_batch_validation(lo: int | None, opt: int | None, hi: int | None,
                                  match: str) -> None:
    with pytest.raises(InputError, match=match):
        batch_range(_meta(batch_size=None), lo, opt, hi)


def test_profile_shapes_images_and_mask() -> None:
    shapes = profile_shapes(_meta(batch_size=None, with_mask=True), 1, 2, 6)
    assert [s.name for s in shapes] == ["images", "mask"]
    images, mask = shapes
    assert (images.min, images.opt, images.max) == ((1, 3, 96, 128), (2, 3, 96, 128),
                                                     (6, 3, 96, 128))
    assert (mask.min, mask.opt, mask.max) == ((1, 96, 128), (2, 96, 128), (6, 96, 128))
    assert [s.name for s in profile_shapes(_meta())] == ["images"]


# ---- TensorRT version features -----------------------------------------------------------

def test_version_parsing_and_features() -> None:
    assert parse_version("10.13.0.35") == (10, 13)
    assert TRT10.precision_flags and TRT10.int8_calibrator and TRT10.strongly_typed
    assert not TRT11.precision_flags and not TRT11.int8_calibrator and TRT11.strongly_typed
    with pytest.raises(InputError, match="cannot parse"):
        parse_version("ten")
    with pytest.raises(BackendUnavailableError, match="needs TensorRT >= 10"):
        features_for("8.6.1")


def test_precision_from_onnx_is_strongly_typed_on_both_versions() -> None:
    for features in (TRT10, TRT11):
        assert check_precision_request("fp16", "fp16", features) == "strongly_typed"
        assert check_precision_request("int8", "int8", features) == "strongly_typed"
        assert check_precision_request("fp32", "fp32", features) == "strongly_typed"


def test_builder_flags_only_on_tensorrt_10() -> None:
    assert check_precision_request("fp16", "fp32", TRT10) == "builder_flags"
    assert check_precision_request("int8", "fp32", TRT10) == "builder_flags"
    with pytest.raises(InputError, match=r"no BuilderFlag.FP16.*export-onnx --precision fp16"):
        check_precision_request("fp16", "fp32", TRT11)
    with pytest.raises(InputError, match=r"BuilderFlag.INT8 or INT8 calibrator.*quantize"):
        check_precision_request("int8", "fp32", TRT11)


def test_reduced_precision_onnx_cannot_be_rebuilt_as_another() -> None:
    with pytest.raises(InputError, match="already int8 .* cannot become fp16"):
        check_precision_request("fp16", "int8", TRT10)
    with pytest.raises(InputError, match="unknown precision"):
        check_precision_request("bf16", "fp32", TRT10)


# ---- argument validation -----------------------------------------------------------------

def test_dla_arguments() -> None:
    validate_dla(None, False)
    validate_dla(0, True, num_dla_cores=2)
    with pytest.raises(InputError, match="--gpu-fallback: only meaningful with --dla-core"):
        validate_dla(None, True)
    with pytest.raises(InputError, match="must be >= 0"):
        validate_dla(-1, False)
    with pytest.raises(InputError, match="core 2 requested but this device has 2"):
        validate_dla(2, False, num_dla_cores=2)


def _onnx_file(tmp_path: Path, meta: ModelMeta) -> Path:
    pytest.importorskip("onnx")
    from tiny_onnx import make_tiny_onnx

    return make_tiny_onnx(tmp_path / "m.onnx", meta)


def test_bad_arguments_fail_before_tensorrt_is_needed(tmp_path: Path) -> None:
    path = _onnx_file(tmp_path, _meta(batch_size=1))
    with pytest.raises(InputError, match="fixed batch of 1"):
        build_engine(EngineBuildConfig(str(path), str(tmp_path / "e.engine"), max_batch=4))
    with pytest.raises(InputError, match="--workspace-mb"):
        build_engine(EngineBuildConfig(str(path), str(tmp_path / "e.engine"), workspace_mb=0))
    with pytest.raises(InputError, match="--gpu-fallback"):
        build_engine(EngineBuildConfig(str(path), str(tmp_path / "e.engine"), gpu_fallback=True))


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed")
def test_without_tensorrt_build_says_so(tmp_path: Path) -> None:
    from runtime.cli import main

    path = _onnx_file(tmp_path, _meta(batch_size=1))
    with pytest.raises(BackendUnavailableError, match="TensorRT not installed"):
        build_engine(EngineBuildConfig(str(path), str(tmp_path / "e.engine")))
    assert main(["build-engine", "--onnx", str(path), "--out", str(tmp_path / "e.engine")]) == 2
    assert not (tmp_path / "e.engine").exists()


# ---- cache files -------------------------------------------------------------------------

def test_timing_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "timing.cache"
    assert read_cache_file(path) == b"" and read_cache_file(None) == b""
    write_cache_file(path, b"\x00tactics\xff")
    assert read_cache_file(path) == b"\x00tactics\xff"
    write_cache_file(None, b"ignored")  # no path: nothing written, no error


def test_calibration_cache_round_trip_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "calib.cache"
    assert read_cache(path) is None and read_cache(None) is None
    write_cache_file(path, b"TRT-100-EntropyCalibration2\nimages: 3c010a14\n")
    assert read_cache(path) == b"TRT-100-EntropyCalibration2\nimages: 3c010a14\n"
    path.write_bytes(b"")
    assert read_cache(path) is None  # empty = recalibrate


# ---- calibration batches -----------------------------------------------------------------

def _write_images(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 255, (40 + 10 * i, 60, 3), dtype=np.uint8)
        paths.append(folder / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_calibration_batches_use_runtime_preprocess_and_fixed_size(tmp_path: Path) -> None:
    from runtime.preprocess import preprocess

    paths = _write_images(tmp_path / "imgs", 5)
    meta = _meta(batch_size=None, with_mask=True)
    feeds = list(fixed_size_batches(paths, meta, 2))
    assert len(feeds) == 2  # 5 images -> two full batches, the short one dropped
    expected = preprocess(paths[2:4], meta)
    np.testing.assert_array_equal(feeds[1]["images"], expected.images)
    np.testing.assert_array_equal(feeds[1]["mask"], expected.mask)
    assert feeds[1]["images"].shape == (2, 3, 96, 128) and feeds[1]["mask"].any()
    assert [f["images"].shape[0] for f in iter_feeds(paths, _meta(), 2)] == [2, 2, 1]
    assert "mask" not in next(iter_feeds(paths, _meta(), 2))


def test_batch_stream_counts_and_checks_batch_size(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "imgs", 4)
    stream = BatchStream(fixed_size_batches(paths, _meta(), 2), batch_size=2)
    assert stream.next() is not None and stream.next() is not None
    assert stream.next() is None and stream.batches_seen == 2
    wrong = BatchStream(iter_feeds(paths, _meta(), 3), batch_size=2)
    with pytest.raises(InputError, match="batch has 3 images, expected 2"):
        wrong.next()
    with pytest.raises(InputError, match="must be positive"):
        BatchStream(iter([]), batch_size=0)


# ---- the real build (needs TensorRT + a GPU) -----------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.skipif(not tensorrt_available(), reason="TensorRT not installed")
def test_build_engine_writes_header_plan_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    import json

    from tiny_onnx import make_tiny_onnx, tiny_meta

    from runtime.engine_file import read_engine_header

    onnx_path = make_tiny_onnx(tmp_path / "tiny.onnx", tiny_meta(96, 128))
    out = tmp_path / "tiny.engine"
    result = build_engine(EngineBuildConfig(str(onnx_path), str(out), min_batch=2, opt_batch=2,
                                            max_batch=4, timing_cache=str(tmp_path / "t.cache"),
                                            plan_path=str(tmp_path / "tiny.plan")))
    header = read_engine_header(out)
    assert header.meta.input_height == 96 and header.plan_bytes > 0
    assert (tmp_path / "t.cache").stat().st_size > 0
    # Golden check ran (8 random inputs: batches 2+2+2+2), passed, and is in the header.
    assert result.golden is not None and result.golden.passed, result.golden.format()
    assert header.built_with["golden"]["passed"] is True
    assert json.loads((tmp_path / "tiny.engine.golden.json").read_text())["passed"] is True
    layers = json.loads((tmp_path / "tiny.engine.layers.json").read_text())
    assert layers["summary"]["layers"] > 0 and header.built_with["layers"]["layers"] > 0
    assert (tmp_path / "tiny.plan").stat().st_size == header.plan_bytes
    assert not (tmp_path / "tiny.engine.unverified").exists()
