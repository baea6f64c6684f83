"""The decisions of an engine build that need no TensorRT: shapes, precision, DLA, caches.

Everything here is a pure function of the model metadata and the user's
arguments, so it is unit-tested on a CPU (tests/test_engine_checks.py);
``export.engine_builder`` calls it before any slow work and then only
translates the decisions into TensorRT calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.atomic import atomic_write_bytes
from runtime.errors import InputError
from runtime.fused import fused_source_size
from runtime.metadata import ModelMeta

DEFAULT_MIN_BATCH = 1  # dynamic-batch defaults when the user gives none
DEFAULT_OPT_BATCH = 4
DEFAULT_MAX_BATCH = 8
DLA_PRECISIONS = ("fp16", "int8")  # DLA has no FP32 kernels (TensorRT "Working with DLA")


@dataclass(frozen=True)
class ProfileShapes:
    """min/opt/max shapes of one network input for an optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


def batch_range(meta: ModelMeta, min_batch: int | None, opt_batch: int | None,
                max_batch: int | None) -> tuple[int, int, int]:
    """Validated ``(min, opt, max)`` batch sizes.

    A fixed-batch model (``meta.batch_size = N``) accepts only N (or nothing);
    a dynamic one defaults to 1/4/8 with an unset opt clamped into [min, max].
    """
    given = {"--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch}
    for flag, value in given.items():
        if value is not None and value <= 0:
            raise InputError(flag, f"must be positive, got {value}")
    if meta.batch_size is not None:
        fixed = meta.batch_size
        wrong = {f: v for f, v in given.items() if v is not None and v != fixed}
        if wrong:
            raise InputError(", ".join(wrong), f"the ONNX model has a fixed batch of {fixed}; "
                             f"got {wrong} (re-export with a dynamic batch to build a range)")
        return fixed, fixed, fixed
    lo = DEFAULT_MIN_BATCH if min_batch is None else min_batch
    hi = DEFAULT_MAX_BATCH if max_batch is None else max_batch
    hi = max(hi, lo) if max_batch is None else hi
    opt = min(max(DEFAULT_OPT_BATCH, lo), hi) if opt_batch is None else opt_batch
    if not lo <= opt <= hi:
        raise InputError("--min-batch/--opt-batch/--max-batch",
                         f"need min <= opt <= max, got {lo} / {opt} / {hi}")
    return lo, opt, hi


def _shapes(meta: ModelMeta, lo: int, opt: int, hi: int) -> list[ProfileShapes]:
    h, w = meta.input_height, meta.input_width
    fused = fused_source_size(meta)
    # --fused-preprocess: uint8 NHWC frames of the source size; the graph makes the
    # canvas (and a with-mask model's constant mask, so no mask input).
    item = (3, h, w) if fused is None else (*fused, 3)
    shapes = [ProfileShapes("images", (lo, *item), (opt, *item), (hi, *item))]
    if meta.with_mask and fused is None:
        shapes.append(ProfileShapes("mask", (lo, h, w), (opt, h, w), (hi, h, w)))
    return shapes


def profile_shapes(meta: ModelMeta, min_batch: int | None = None, opt_batch: int | None = None,
                   max_batch: int | None = None) -> list[ProfileShapes]:
    """Shapes for ``images [B,3,H,W]`` (and ``mask [B,H,W]`` when the model has one), or
    ``images [B,Hs,Ws,3]`` (uint8 frames) for a ``--fused-preprocess`` model."""
    return _shapes(meta, *batch_range(meta, min_batch, opt_batch, max_batch))


def calibration_batch(meta: ModelMeta, calib_batch: int | None,
                      profiles: Sequence[ProfileShapes]) -> int:
    """Images per INT8 calibration batch (TensorRT 10 builder-flags path).

    TensorRT calibrates at the *calibration profile's* opt shape ("MIN and MAX
    values will be overwritten by kOPT", ``IBuilderConfig::setCalibrationProfile``
    in NvInfer.h 10.x), so the calibrator must feed exactly that many images per
    batch. The builder therefore sets a calibration profile of its own with
    min = opt = max = this batch. Default: the build profile's opt batch; a
    fixed-batch model only accepts its own batch.
    """
    if calib_batch is not None and calib_batch <= 0:
        raise InputError("--calib-batch", f"must be positive, got {calib_batch}")
    if meta.batch_size is not None:
        if calib_batch is not None and calib_batch != meta.batch_size:
            raise InputError("--calib-batch", f"the ONNX model has a fixed batch of "
                             f"{meta.batch_size}; got {calib_batch}")
        return meta.batch_size
    return profiles[0].opt[0] if calib_batch is None else calib_batch


def check_fused_calibration(meta: ModelMeta) -> None:
    """TensorRT 10 builder-flag INT8 calibrates on float canvases (``runtime.preprocess``
    batches, ``export.int8.calib_data``), which a ``--fused-preprocess`` graph (uint8 frames)
    does not take: refused before the build rather than failing in the calibrator."""
    if fused_source_size(meta) is not None:
        raise InputError("--precision int8", "builder-flag INT8 calibration feeds float "
                         "canvases, which a --fused-preprocess model does not take; build "
                         "it as fp16/fp32, or calibrate the plain export")


def calibration_profile(meta: ModelMeta, batch: int) -> list[ProfileShapes]:
    """The static profile INT8 calibration runs at (see :func:`calibration_batch`)."""
    return _shapes(meta, batch, batch, batch)


def check_calibration_images(num_images: int, batch: int, source: str) -> int:
    """Number of full calibration batches; ``InputError`` when there is none (TensorRT
    would otherwise compute scales from no data at all)."""
    if num_images < batch:
        raise InputError(source, f"{num_images} calibration image(s) found, need at least "
                         f"one batch of {batch} (--calib-batch)")
    return num_images // batch


def resolve_precision(requested: str | None, onnx_precision: str) -> str:
    """The precision the engine will really have.

    A reduced-precision ONNX (FP16 weights or INT8 Q/DQ) builds as a strongly
    typed network, whose precision is the graph's own: ``--precision fp32`` on
    it would not give an FP32 engine, so it is refused rather than written
    into the header as a false label. ``None`` means "as the ONNX".
    """
    if requested is None:
        return onnx_precision
    if requested not in ("fp32", "fp16", "int8"):
        raise InputError("--precision", f"unknown precision {requested!r} (fp32|fp16|int8)")
    if onnx_precision != "fp32" and requested != onnx_precision:
        raise InputError("--precision", f"the ONNX model is already {onnx_precision} and a "
                         f"strongly typed network builds in the graph's precision, so it "
                         f"cannot become {requested}; build the FP32 ONNX for "
                         f"{requested} (or omit --precision)")
    return requested


def validate_dla(dla_core: int | None, gpu_fallback: bool, num_dla_cores: int | None = None,
                 precision: str | None = None,
                 profiles: Sequence[ProfileShapes] = ()) -> None:
    """DLA arguments, checked before the build.

    - core index in range; ``--gpu-fallback`` only with a DLA core;
    - FP16 or INT8 only: DLA has no FP32 kernels, so an FP32 build either fails
      or, with GPU fallback, silently runs every layer on the GPU;
    - a static profile: "DLA does not support dynamic dimensions, so the
      profile's min, max, and opt values must be equal" (TensorRT "DLA
      Supported Layers and Restrictions", general restrictions).
    """
    if dla_core is None:
        if gpu_fallback:
            raise InputError("--gpu-fallback", "only meaningful with --dla-core")
        return
    if dla_core < 0:
        raise InputError("--dla-core", f"must be >= 0, got {dla_core}")
    if num_dla_cores is not None and dla_core >= num_dla_cores:
        raise InputError("--dla-core", f"core {dla_core} requested but this device has "
                         f"{num_dla_cores} DLA core(s)")
    if precision is not None and precision not in DLA_PRECISIONS:
        raise InputError("--dla-core", f"DLA runs FP16 or INT8 only, this build is {precision} "
                         "(it would run wholly on the GPU); use an FP16/INT8 ONNX or "
                         "--precision fp16|int8")
    dynamic = [p.name for p in profiles if not p.static]
    if dynamic:
        raise InputError("--dla-core", f"DLA needs a static shape (min = opt = max) but the "
                         f"profile of {dynamic} is a range; pass the same "
                         "--min-batch/--opt-batch/--max-batch")


def dla_placement(layers: Sequence[tuple[str, bool]], gpu_fallback: bool) -> tuple[int, str]:
    """Summarise ``IBuilderConfig.can_run_on_DLA`` over the network's layers.

    ``layers``: ``(layer name, can run on DLA)``. Returns ``(layers on the GPU,
    one-line summary)``. Without GPU fallback any GPU-only layer fails the
    build (TensorRT would too, after a long build); GPU fallback is allowed but
    reported, since "layers that cannot run on DLA silently fall back to GPU
    execution" (TensorRT "DLA Runtime Configuration: GPU Fallback Mode").
    """
    gpu = [name for name, ok in layers if not ok]
    summary = (f"{len(layers) - len(gpu)} of {len(layers)} layers on DLA, {len(gpu)} on the "
               "GPU" + (f" (first: {', '.join(gpu[:3])})" if gpu else ""))
    if gpu and not gpu_fallback:
        raise InputError("--dla-core", f"{summary}; add --gpu-fallback to run those on the GPU")
    if layers and len(gpu) == len(layers):
        raise InputError("--dla-core", f"no layer of this network can run on DLA ({summary})")
    return len(gpu), summary


# ---- cache files -------------------------------------------------------------------------

def default_calib_cache(out_path: str | os.PathLike[str], onnx_sha256: str) -> str:
    """``<out>.calib-<first 16 hex of the ONNX SHA-256>.cache``.

    Keyed on the ONNX content: a cache of per-tensor scales from another
    version of the model would be reused silently (TensorRT matches scales by
    tensor name only), so a changed ONNX gets a new file.
    """
    return f"{os.fspath(out_path)}.calib-{onnx_sha256[:16]}.cache"


def read_cache_file(path: str | os.PathLike[str] | None) -> bytes:
    """Bytes of a timing or calibration cache at ``path``; ``b""`` (start empty) if absent."""
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


def write_cache_file(path: str | os.PathLike[str] | None, data: bytes) -> None:
    """Write a timing or calibration cache atomically (no-op without a path)."""
    if path is not None:
        atomic_write_bytes(path, bytes(data))


def timing_cache_outcome(path: str | os.PathLike[str] | None, had_data: bool,
                         accepted: bool) -> tuple[bool, str | None]:
    """``(write the cache back?, warning)`` after ``IBuilderConfig.set_timing_cache``.

    ``set_timing_cache(cache, ignore_mismatch=False)`` returns False when the
    file was made on another device (its docstring in the 10.x bindings: "A
    failure will be reported if the CUDA device property in the provided cache
    is different from current environment"). The build then
    starts from an empty cache, and the file is left untouched: overwriting
    it would destroy a cache that is valid on the machine that made it.
    """
    if path is None:
        return False, None
    if had_data and not accepted:
        return False, (f"timing cache {os.fspath(path)} was made with another GPU or "
                       "TensorRT version; built without it and left the file unchanged "
                       "(use another --timing-cache file for this device)")
    return True, None
