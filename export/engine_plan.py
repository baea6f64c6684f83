"""What an engine build will do, decided before TensorRT is touched.

:class:`EngineBuildConfig` is the user's request (``build-engine``'s options);
:func:`plan_build` reads the ONNX, checks it against its metadata and every
argument against the model, and returns the :class:`BuildPlan` that
``export.engine_builder`` translates into TensorRT calls and
``export.engine_output`` writes out. No TensorRT needed: unit-tested on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from export.calibrator import read_cache
from export.engine_checks import (
    ProfileShapes,
    calibration_batch,
    check_fused_calibration,
    default_calib_cache,
    profile_shapes,
    resolve_precision,
    validate_dla,
)
from export.golden import VERIFY_MODES
from export.onnx_meta import check_graph_matches_meta, load_onnx, read_meta
from runtime.errors import InputError, ModelFormatError
from runtime.files import file_sha256
from runtime.metadata import ModelMeta


@dataclass(frozen=True)
class EngineBuildConfig:
    onnx_path: str  # detr-edge ONNX (fp32, fp16 or int8 Q/DQ), metadata inside
    out_path: str  # engine file to write
    min_batch: int | None = None  # None = model's fixed batch, or 1 for a dynamic batch
    opt_batch: int | None = None  # None = fixed batch, or 4 (clamped into [min, max])
    max_batch: int | None = None  # None = fixed batch, or 8
    workspace_mb: int | None = None  # None = TensorRT default (all free device memory)
    timing_cache: str | None = None  # read before and written after the build; None = none
    dla_core: int | None = None  # None = GPU; N = run on DLA core N (Jetson Orin/Xavier)
    gpu_fallback: bool = False  # allow layers DLA cannot run to fall back to the GPU
    precision: str | None = None  # None = as the ONNX; fp16|int8 on FP32 ONNX = TRT 10 flags
    calib_data: str | None = None  # image dir for TRT 10 INT8 calibration
    calib_images: int = 256  # calibration images drawn from calib_data
    calib_batch: int | None = None  # images per calibration batch; None = profile opt batch
    calib_cache: str | None = None  # None = <out_path>.calib-<ONNX sha256[:16]>.cache
    seed: int = 0  # calibration image selection
    version_compatible: bool = False  # BuilderFlag.VERSION_COMPATIBLE: runs on later TensorRT
    verify: str = "fail"  # golden check vs ONNX Runtime: fail | warn | off
    verify_data: str | None = None  # images for it; None = calib_data, else random inputs
    verify_images: int = 8  # inputs the golden check runs
    plan_path: str | None = None  # also write the bare plan here (trtexec, DeepStream, Triton)
    builder_opt_level: int | None = None  # 0..5; None = TensorRT's default (3)


@dataclass(frozen=True)
class BuildPlan:
    """What the build will do, decided before TensorRT is touched."""

    meta: ModelMeta  # metadata of the ONNX
    precision: str  # the engine's real precision (export.engine_checks.resolve_precision)
    mode: str  # "strongly_typed" | "builder_flags"
    profiles: list[ProfileShapes]  # the optimization profile
    calib_batch: int | None  # images per calibration batch (builder-flags INT8 only)
    calib_cache: str | None  # calibration cache file (builder-flags INT8 only)
    onnx_sha256: str  # content hash of the ONNX file


def plan_build(config: EngineBuildConfig) -> BuildPlan:
    """Read the ONNX and validate every argument; raise ``InputError`` /
    ``ModelFormatError`` before any slow work (no TensorRT needed)."""
    meta = _read_model(config.onnx_path)
    profiles = profile_shapes(meta, config.min_batch, config.opt_batch, config.max_batch)
    precision = resolve_precision(config.precision, meta.precision)
    validate_dla(config.dla_core, config.gpu_fallback, precision=precision, profiles=profiles)
    check_build_options(config)
    digest = file_sha256(config.onnx_path)
    calib_batch, calib_cache = _calibration(config, meta, precision, profiles, digest)
    mode = "builder_flags" if precision != meta.precision else "strongly_typed"
    return BuildPlan(meta=meta, precision=precision, mode=mode, profiles=profiles,
                     calib_batch=calib_batch, calib_cache=calib_cache, onnx_sha256=digest)


def _read_model(onnx_path: str) -> ModelMeta:
    """The metadata of a TensorRT-ready ONNX whose graph agrees with it."""
    model = load_onnx(onnx_path)
    meta = read_meta(model, onnx_path)
    check_graph_matches_meta(model, meta, onnx_path)
    if meta.int8_format == "cpu":
        raise ModelFormatError(onnx_path, "INT8 model in the cpu Q/DQ format (uint8 "
                               "activations) is not a TensorRT input; quantize it with "
                               "`detr-edge quantize --target tensorrt`")
    return meta  # the graph is dropped: TensorRT parses the file itself


def check_build_options(config: EngineBuildConfig) -> None:
    """The options that do not depend on the model: workspace, golden check, optimizer level."""
    if config.workspace_mb is not None and config.workspace_mb <= 0:
        raise InputError("--workspace-mb", f"must be positive, got {config.workspace_mb}")
    if config.verify not in VERIFY_MODES:
        raise InputError("--verify", f"must be one of {'|'.join(VERIFY_MODES)}, "
                         f"got {config.verify!r}")
    if config.verify_images <= 0:
        raise InputError("--verify-images", f"must be positive, got {config.verify_images}")
    if config.builder_opt_level is not None and not 0 <= config.builder_opt_level <= 5:
        raise InputError("--builder-opt-level", f"must be 0..5 (TensorRT's levels), got "
                         f"{config.builder_opt_level}")


def _calibration(config: EngineBuildConfig, meta: ModelMeta, precision: str,
                 profiles: list[ProfileShapes], onnx_sha256: str
                 ) -> tuple[int | None, str | None]:
    """``(images per calibration batch, cache file)`` for builder-flag INT8 (TensorRT 10
    calibrating an FP32 ONNX), else ``(None, None)``."""
    if not (precision == "int8" and meta.precision == "fp32"):
        if config.calib_batch is not None:
            raise InputError("--calib-batch", "only used when an FP32 ONNX is built as INT8 "
                             "(--precision int8 with calibration)")
        return None, None
    check_fused_calibration(meta)
    batch = calibration_batch(meta, config.calib_batch, profiles)
    cache = config.calib_cache or default_calib_cache(config.out_path, onnx_sha256)
    if config.calib_data is None and read_cache(cache) is None:
        raise InputError("--calib-data", f"INT8 with builder flags needs calibration "
                         f"images (or an existing calibration cache {cache})")
    return batch, cache
