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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.engine_checks import (
    ProfileShapes,
    batch_range,
    calibration_batch,
    calibration_profile,
    check_calibration_images,
    check_fused_calibration,
    default_calib_cache,
    dla_placement,
    profile_shapes,
    read_timing_cache,
    resolve_precision,
    timing_cache_outcome,
    validate_dla,
    write_timing_cache,
)
from runtime.errors import InputError, ModelFormatError
from runtime.files import file_sha256
from runtime.metadata import ModelMeta

if TYPE_CHECKING:
    import tensorrt as trt

    from export.calibrator import CalibrationSession
    from export.golden import GoldenReport

__all__ = ["BuildPlan", "BuildResult", "EngineBuildConfig", "batch_range", "build_engine",
           "plan_build", "profile_shapes", "read_timing_cache", "validate_dla",
           "write_timing_cache"]

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


@dataclass
class BuildResult:
    path: Path  # the engine file
    precision: str
    built_with: dict[str, Any]  # as recorded in the engine header
    warnings: list[str] = field(default_factory=list)  # one line each, for the CLI
    golden: GoldenReport | None = None  # None with --verify off


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


def plan_build(config: EngineBuildConfig) -> BuildPlan:
    """Read the ONNX and validate every argument; raise ``InputError`` /
    ``ModelFormatError`` before any slow work (no TensorRT needed)."""
    from export.golden import VERIFY_MODES
    from export.onnx_meta import check_graph_matches_meta, load_onnx, read_meta

    model = load_onnx(config.onnx_path)
    meta = read_meta(model, config.onnx_path)
    check_graph_matches_meta(model, meta, config.onnx_path)
    if meta.int8_format == "cpu":
        raise ModelFormatError(config.onnx_path, "INT8 model in the cpu Q/DQ format (uint8 "
                               "activations) is not a TensorRT input; quantize it with "
                               "`detr-edge quantize --target tensorrt`")
    del model  # TensorRT parses the file itself; do not hold a large graph twice
    profiles = profile_shapes(meta, config.min_batch, config.opt_batch, config.max_batch)
    precision = resolve_precision(config.precision, meta.precision)
    validate_dla(config.dla_core, config.gpu_fallback, precision=precision, profiles=profiles)
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
    digest = file_sha256(config.onnx_path)
    int8_flags = precision == "int8" and meta.precision == "fp32"
    calib_batch = calib_cache = None
    if int8_flags:
        check_fused_calibration(meta)
        calib_batch = calibration_batch(meta, config.calib_batch, profiles)
        calib_cache = config.calib_cache or default_calib_cache(config.out_path, digest)
        if config.calib_data is None and read_cache(calib_cache) is None:
            raise InputError("--calib-data", f"INT8 with builder flags needs calibration "
                             f"images (or an existing calibration cache {calib_cache})")
    elif config.calib_batch is not None:
        raise InputError("--calib-batch", "only used when an FP32 ONNX is built as INT8 "
                         "(--precision int8 with calibration)")
    mode = "builder_flags" if precision != meta.precision else "strongly_typed"
    return BuildPlan(meta=meta, precision=precision, mode=mode, profiles=profiles,
                     calib_batch=calib_batch, calib_cache=calib_cache, onnx_sha256=digest)


def build_engine(config: EngineBuildConfig) -> BuildResult:
    """Build and write the engine file.

    Raises ``BackendUnavailableError`` without TensorRT, ``InputError`` for bad
    arguments (before any slow work), ``ModelFormatError`` when the parser or
    builder rejects the model (parser errors name the ONNX nodes).
    """
    from export.trt_compat import check_precision_request, installed_features

    plan = plan_build(config)
    features = installed_features()
    # Raises on TensorRT 11 for builder flags (no BuilderFlag.FP16/INT8 there).
    check_precision_request(plan.precision, plan.meta.precision, features)

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    validate_dla(config.dla_core, config.gpu_fallback, builder.num_DLA_cores)
    network, _parser = _parse_network(trt, builder, logger, config.onnx_path, plan.mode)
    build_config = builder.create_builder_config()
    warnings: list[str] = []
    built_with: dict[str, Any] = {
        "profile": [dataclasses.asdict(p) for p in plan.profiles], "mode": plan.mode,
        "workspace_mb": config.workspace_mb, "dla_core": config.dla_core,
        "gpu_fallback": config.gpu_fallback, "onnx": Path(config.onnx_path).name,
        "onnx_sha256": plan.onnx_sha256, "version_compatible": config.version_compatible}
    _configure(trt, builder, network, build_config, config, plan, built_with, warnings)
    cache, write_cache_back = _attach_timing_cache(build_config, config.timing_cache, warnings)
    session: CalibrationSession | None = None
    calibrator: Any = None
    if plan.mode == "builder_flags" and plan.precision == "int8":
        session, calibrator = _attach_calibrator(trt, builder, network, build_config, config,
                                                 plan)
        built_with.update(calib_batch=plan.calib_batch, calib_cache=plan.calib_cache)
    try:
        serialized = builder.build_serialized_network(network, build_config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if session is not None:
        session.raise_if_failed()  # an error in get_batch must fail the build
    if serialized is None:
        raise ModelFormatError(config.onnx_path, "TensorRT could not build an engine "
                               "(see the TensorRT log above)")
    if write_cache_back:
        write_timing_cache(config.timing_cache, bytes(memoryview(cache.serialize())))
    from export.engine_output import EngineBytes, verify_and_write, write_layer_report

    engine = EngineBytes(plan.meta.replace(precision=plan.precision),
                         bytes(memoryview(serialized)), trt.__version__, *gpu_info())
    # Free the builder's device memory before the engine runs (Jetson memory is shared).
    del serialized, cache, calibrator, build_config, network, _parser, builder
    write_layer_report(config, plan, engine, built_with, warnings)
    golden = verify_and_write(config, plan, engine, built_with, warnings)
    return BuildResult(Path(config.out_path), plan.precision, built_with, warnings, golden)


def _parse_network(trt: Any, builder: trt.Builder, logger: trt.ILogger, onnx_path: str,
                   mode: str) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """The parsed network and its parser (which owns the weights: keep both alive
    until the engine is serialized)."""
    flags = 0
    if mode == "strongly_typed":
        # Required on 10.x to take precision from the graph; on 11.x every network
        # is strongly typed and the flag is accepted but ignored (TensorRT 11.0 API docs).
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = parser_errors(parser)
        raise ModelFormatError(onnx_path, "TensorRT ONNX parser failed: "
                               + "; ".join(errors[:5])
                               + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))
    return network, parser


def _set_profile(trt: Any, profile: trt.IOptimizationProfile, network: trt.INetworkDefinition,
                 shapes: list[ProfileShapes]) -> None:
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for s in shapes:
        if s.name in network_inputs:
            profile.set_shape(s.name, trt.Dims(list(s.min)), trt.Dims(list(s.opt)),
                              trt.Dims(list(s.max)))


def _configure(trt: Any, builder: trt.Builder, network: trt.INetworkDefinition,
               build_config: trt.IBuilderConfig, config: EngineBuildConfig, plan: BuildPlan,
               built_with: dict[str, Any], warnings: list[str]) -> None:
    """Workspace, profile, precision flags, DLA and compatibility settings."""
    if config.workspace_mb is not None:
        build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                           config.workspace_mb << 20)
    # Layer names, precisions and tactics in the engine inspector's report.
    build_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if config.builder_opt_level is not None:
        build_config.builder_optimization_level = config.builder_opt_level
        built_with["builder_opt_level"] = config.builder_opt_level
    profile = builder.create_optimization_profile()
    _set_profile(trt, profile, network, plan.profiles)
    build_config.add_optimization_profile(profile)
    if plan.mode == "builder_flags":
        build_config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers without a kernel fall to FP16
        if plan.precision == "int8":
            build_config.set_flag(trt.BuilderFlag.INT8)
    if config.version_compatible:
        # Runs on this and later TensorRT versions (same major, or 10 -> 11); the plan
        # then embeds a lean runtime (TensorRT "Engine Compatibility: Version Compatibility").
        build_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if config.dla_core is not None:
        build_config.default_device_type = trt.DeviceType.DLA
        build_config.DLA_core = config.dla_core
        if config.gpu_fallback:
            build_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        layers = [(network.get_layer(i).name, build_config.can_run_on_DLA(network.get_layer(i)))
                  for i in range(network.num_layers)]
        on_gpu, summary = dla_placement(layers, config.gpu_fallback)
        built_with["dla_placement"] = summary
        if on_gpu:
            warnings.append(f"DLA: {summary} (GPU fallback)")


def _attach_timing_cache(build_config: trt.IBuilderConfig, path: str | None,
                         warnings: list[str]) -> tuple[trt.ITimingCache, bool]:
    """The timing cache for the build and whether to write it back afterwards."""
    data = read_timing_cache(path)
    cache = build_config.create_timing_cache(data)
    accepted = build_config.set_timing_cache(cache, ignore_mismatch=False)
    write_back, warning = timing_cache_outcome(path, bool(data), accepted)
    if not accepted:
        cache = build_config.create_timing_cache(b"")  # start empty instead
        build_config.set_timing_cache(cache, ignore_mismatch=False)
    if warning:
        warnings.append(warning)
    return cache, write_back


def _attach_calibrator(trt: Any, builder: trt.Builder, network: trt.INetworkDefinition,
                       build_config: trt.IBuilderConfig, config: EngineBuildConfig,
                       plan: BuildPlan) -> tuple[CalibrationSession, Any]:
    """Entropy calibrator at a static calibration profile of ``plan.calib_batch`` images."""
    from export.calibrator import BatchStream, CalibrationSession, make_entropy_calibrator
    from export.int8.calib_data import fixed_size_batches, list_images, select_images

    assert plan.calib_batch is not None
    batch = plan.calib_batch
    paths: list[Path] = []
    if config.calib_data is not None:
        paths = select_images(list_images(config.calib_data), config.calib_images, config.seed)
        check_calibration_images(len(paths), batch, config.calib_data)
    stream = BatchStream(fixed_size_batches(paths, plan.meta, batch), batch)
    session = CalibrationSession(stream, plan.calib_cache)
    calibrator = make_entropy_calibrator(session)
    build_config.int8_calibrator = calibrator
    calib_profile = builder.create_optimization_profile()
    _set_profile(trt, calib_profile, network, calibration_profile(plan.meta, batch))
    if not build_config.set_calibration_profile(calib_profile):
        raise ModelFormatError(config.onnx_path, f"TensorRT rejected the calibration profile "
                               f"at batch {batch}")
    return session, calibrator


def read_cache(path: str) -> bytes | None:
    from export.calibrator import read_cache as _read

    return _read(path)

