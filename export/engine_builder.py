"""Compile a TensorRT engine from a detr-edge ONNX model (TensorRT 10 / 11).

Precision comes from the ONNX (FP16 weights or INT8 Q/DQ) in a strongly typed
network. On TensorRT 10 a plain FP32 ONNX may instead be built with
``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` (+ entropy calibrator); TensorRT 11
removed both, see ``export.trt_compat``. The result is a detr-edge engine file
(``runtime.engine_file``: header with the model metadata and build facts, then
the serialized plan), written atomically.

Pure parts (optimization-profile shapes, argument validation, timing-cache
files) need no TensorRT and are unit-tested; the rest is type-checked with mypy
against tensorrt-stubs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.atomic import atomic_write_bytes
from runtime.errors import BackendUnavailableError, InputError, ModelFormatError
from runtime.metadata import ModelMeta

if TYPE_CHECKING:
    import tensorrt as trt

DEFAULT_MIN_BATCH = 1  # dynamic-batch defaults when the user gives none
DEFAULT_OPT_BATCH = 4
DEFAULT_MAX_BATCH = 8


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
    calib_batch: int = 8  # images per calibration batch
    calib_cache: str | None = None  # None = <out_path>.calib.cache
    seed: int = 0  # calibration image selection


@dataclass(frozen=True)
class ProfileShapes:
    """min/opt/max shapes of one network input for an optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


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


def profile_shapes(meta: ModelMeta, min_batch: int | None = None, opt_batch: int | None = None,
                   max_batch: int | None = None) -> list[ProfileShapes]:
    """Shapes for ``images [B,3,H,W]`` (and ``mask [B,H,W]`` when the model has one)."""
    lo, opt, hi = batch_range(meta, min_batch, opt_batch, max_batch)
    h, w = meta.input_height, meta.input_width
    shapes = [ProfileShapes("images", (lo, 3, h, w), (opt, 3, h, w), (hi, 3, h, w))]
    if meta.with_mask:
        shapes.append(ProfileShapes("mask", (lo, h, w), (opt, h, w), (hi, h, w)))
    return shapes


def validate_dla(dla_core: int | None, gpu_fallback: bool, num_dla_cores: int | None = None
                 ) -> None:
    """DLA arguments: core index in range, ``--gpu-fallback`` only with a DLA core."""
    if dla_core is None:
        if gpu_fallback:
            raise InputError("--gpu-fallback", "only meaningful with --dla-core")
        return
    if dla_core < 0:
        raise InputError("--dla-core", f"must be >= 0, got {dla_core}")
    if num_dla_cores is not None and dla_core >= num_dla_cores:
        raise InputError("--dla-core", f"core {dla_core} requested but this device has "
                         f"{num_dla_cores} DLA core(s)")


def read_timing_cache(path: str | os.PathLike[str] | None) -> bytes:
    """Serialized timing cache at ``path``; ``b""`` (start empty) if absent."""
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


def write_timing_cache(path: str | os.PathLike[str] | None, data: bytes) -> None:
    if path is not None:
        atomic_write_bytes(path, data)


def parser_errors(parser: trt.OnnxParser) -> list[str]:
    """One line per ONNX parser error, naming the node and its operator."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() or f"#{err.node()}"
        lines.append(f"node {node} ({err.node_operator()}): {err.desc()}")
    return lines


def gpu_info() -> tuple[str, str]:
    """``(gpu name, compute capability "8.7")`` of device 0 via cuda-python, or
    ``("unknown", "unknown")`` when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return "unknown", "unknown"
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return "unknown", "unknown"
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def build_engine(config: EngineBuildConfig) -> Path:
    """Build and write the engine file; returns its path.

    Raises ``BackendUnavailableError`` without TensorRT, ``InputError`` for bad
    arguments (before any slow work), ``ModelFormatError`` when the parser or
    builder rejects the model (parser errors name the ONNX nodes).
    """
    from export.onnx_meta import check_graph_matches_meta, load_onnx, read_meta
    from export.qdq_format import int8_target
    from export.trt_compat import check_precision_request, installed_features

    model = load_onnx(config.onnx_path)
    meta = read_meta(model, config.onnx_path)
    check_graph_matches_meta(model, meta, config.onnx_path)
    if int8_target(meta) == "cpu":
        raise ModelFormatError(config.onnx_path, "INT8 model in the cpu Q/DQ format (uint8 "
                               "activations) is not a TensorRT input; quantize it with "
                               "`detr-edge quantize --target tensorrt`")
    del model  # TensorRT parses the file itself; do not hold a large graph twice
    profiles = profile_shapes(meta, config.min_batch, config.opt_batch, config.max_batch)
    validate_dla(config.dla_core, config.gpu_fallback)
    if config.workspace_mb is not None and config.workspace_mb <= 0:
        raise InputError("--workspace-mb", f"must be positive, got {config.workspace_mb}")
    features = installed_features()
    precision = config.precision or meta.precision
    mode = check_precision_request(precision, meta.precision, features)
    calib_cache = config.calib_cache or f"{config.out_path}.calib.cache"
    if mode == "builder_flags" and precision == "int8" and config.calib_data is None \
            and read_cache(calib_cache) is None:
        raise InputError("--calib-data", f"INT8 with builder flags needs calibration images "
                         f"(or an existing calibration cache {calib_cache})")

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    validate_dla(config.dla_core, config.gpu_fallback, builder.num_DLA_cores)
    flags = 0
    if mode == "strongly_typed":
        # Required on 10.x to take precision from the graph; on 11.x every network
        # is strongly typed and the flag is accepted but ignored (TensorRT 11.0 API docs).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(config.onnx_path)):
        errors = parser_errors(parser)
        raise ModelFormatError(config.onnx_path, "TensorRT ONNX parser failed: "
                               + "; ".join(errors[:5])
                               + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))

    build_config = builder.create_builder_config()
    if config.workspace_mb is not None:
        build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                           config.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for shapes in profiles:
        if shapes.name in network_inputs:
            profile.set_shape(shapes.name, trt.Dims(list(shapes.min)),
                              trt.Dims(list(shapes.opt)), trt.Dims(list(shapes.max)))
    build_config.add_optimization_profile(profile)

    cache = build_config.create_timing_cache(read_timing_cache(config.timing_cache))
    build_config.set_timing_cache(cache, ignore_mismatch=False)

    calibrator: Any = None
    if mode == "builder_flags":
        build_config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers without a kernel fall to FP16
        if precision == "int8":
            build_config.set_flag(trt.BuilderFlag.INT8)
            calibrator = _calibrator(config, meta, calib_cache, profiles[0].opt[0])
            build_config.int8_calibrator = calibrator
            build_config.set_calibration_profile(profile)
    if config.dla_core is not None:
        build_config.default_device_type = trt.DeviceType.DLA
        build_config.DLA_core = config.dla_core
        if config.gpu_fallback:
            build_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    try:
        plan = builder.build_serialized_network(network, build_config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if plan is None:
        raise ModelFormatError(config.onnx_path, "TensorRT could not build an engine "
                               "(see the TensorRT log above)")
    write_timing_cache(config.timing_cache, bytes(memoryview(cache.serialize())))
    gpu_name, capability = gpu_info()
    built_with = {"profile": [dataclasses.asdict(p) for p in profiles], "mode": mode,
                  "workspace_mb": config.workspace_mb, "dla_core": config.dla_core,
                  "gpu_fallback": config.gpu_fallback, "onnx": Path(config.onnx_path).name}
    _write(config.out_path, meta.replace(precision=precision), bytes(memoryview(plan)),
           trt.__version__, gpu_name, capability, built_with)
    return Path(config.out_path)


def _calibrator(config: EngineBuildConfig, meta: ModelMeta, cache_path: str,
                opt_batch: int) -> Any:
    from export.calib_data import fixed_size_batches, list_images, select_images
    from export.calibrator import BatchStream, make_entropy_calibrator

    paths: list[Path] = []
    if config.calib_data is not None:
        paths = select_images(list_images(config.calib_data), config.calib_images, config.seed)
    # Calibration runs at the profile's opt shape: a fixed-batch model only accepts
    # its own batch, a dynamic one any batch in the profile.
    batch = meta.batch_size or min(config.calib_batch, opt_batch)
    stream = BatchStream(fixed_size_batches(paths, meta, batch), batch)
    return make_entropy_calibrator(stream, cache_path)


def read_cache(path: str) -> bytes | None:
    from export.calibrator import read_cache as _read

    return _read(path)


def _write(path: str, meta: ModelMeta, plan: bytes, trt_version: str, gpu_name: str,
           capability: str, built_with: dict[str, Any]) -> None:
    try:
        from runtime.engine_file import write_engine_file
    except ImportError as exc:  # pragma: no cover - engine_file is part of the runtime
        raise BackendUnavailableError(f"runtime.engine_file unavailable: {exc}") from exc
    write_engine_file(path, meta, plan, tensorrt_version=trt_version, gpu_name=gpu_name,
                      compute_capability=capability, built_with=built_with)
