"""Compile a TensorRT engine from a detr-edge ONNX model (TensorRT 10 / 11).

Precision comes from the ONNX (FP16 weights or INT8 Q/DQ) in a strongly typed
network. On TensorRT 10 a plain FP32 ONNX may instead be built with
``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` (+ entropy calibrator); TensorRT 11
removed both, see ``export.trt_compat``. The result is a detr-edge engine file
(``runtime.engine_file``: header with the model metadata and build facts, then
the serialized plan), written atomically.

The steps of :func:`build_engine`: plan (``export.engine_plan``: read the ONNX,
check every argument; no TensorRT), parse the ONNX, configure the builder
(profile, precision, DLA, timing cache), build (with the calibrator for
builder-flag INT8), then write (``export.engine_output``: layer report, golden
check, engine file). The pure decisions live in ``export.engine_checks`` and are
unit-tested; the TensorRT calls are type-checked with mypy against tensorrt-stubs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.calibrator import BatchStream, CalibrationSession, make_entropy_calibrator
from export.engine_checks import (
    ProfileShapes,
    calibration_profile,
    check_calibration_images,
    dla_placement,
    read_cache_file,
    timing_cache_outcome,
    validate_dla,
    write_cache_file,
)
from export.engine_output import EngineBytes, verify_and_write, write_layer_report
from export.engine_plan import BuildPlan, EngineBuildConfig, plan_build
from export.golden import GoldenReport
from export.int8.calib_data import fixed_size_batches, list_images, select_images
from export.trt_compat import check_precision_request, installed_features
from runtime.backends.trt_import import device_info
from runtime.errors import BackendUnavailableError, ModelFormatError

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["BuildResult", "EngineBuildConfig", "build_engine"]


@dataclass
class BuildResult:
    path: Path  # the engine file
    precision: str
    built_with: dict[str, Any]  # as recorded in the engine header
    warnings: list[str] = field(default_factory=list)  # one line each, for the CLI
    golden: GoldenReport | None = None  # None with --verify off


def build_engine(config: EngineBuildConfig) -> BuildResult:
    """Build and write the engine file.

    Raises ``BackendUnavailableError`` without TensorRT, ``InputError`` for bad
    arguments (before any slow work), ``ModelFormatError`` when the parser or
    builder rejects the model (parser errors name the ONNX nodes).
    """
    plan = plan_build(config)
    # Raises on TensorRT 11 for builder flags (no BuilderFlag.FP16/INT8 there).
    check_precision_request(plan.precision, plan.meta.precision, installed_features())
    import tensorrt as trt

    engine, built_with, warnings = _compile(trt, config, plan)
    write_layer_report(config, plan, engine, built_with, warnings)
    golden = verify_and_write(config, plan, engine, built_with, warnings)
    return BuildResult(Path(config.out_path), plan.precision, built_with, warnings, golden)


def parser_errors(parser: trt.OnnxParser) -> list[str]:
    """One line per ONNX parser error, naming the node and its operator."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() or f"#{err.node()}"
        lines.append(f"node {node} ({err.node_operator()}): {err.desc()}")
    return lines


def gpu_info() -> tuple[str, str]:
    """``(gpu name, compute capability "8.7")`` of device 0 (``runtime.backends.trt_import``,
    what the backend compares the header with), or ``("unknown", "unknown")`` without
    cuda-python."""
    try:
        return device_info(0)
    except BackendUnavailableError:
        return "unknown", "unknown"


def _built_with(config: EngineBuildConfig, plan: BuildPlan) -> dict[str, Any]:
    """The build facts the engine header records (the steps add theirs)."""
    return {"profile": [dataclasses.asdict(p) for p in plan.profiles], "mode": plan.mode,
            "workspace_mb": config.workspace_mb, "dla_core": config.dla_core,
            "gpu_fallback": config.gpu_fallback, "onnx": Path(config.onnx_path).name,
            "onnx_sha256": plan.onnx_sha256, "version_compatible": config.version_compatible}


def _compile(trt: Any, config: EngineBuildConfig, plan: BuildPlan
             ) -> tuple[EngineBytes, dict[str, Any], list[str]]:
    """Parse, configure and build: ``(engine, build facts, warnings)``.

    The builder, network, parser and calibrator are local here, so their device
    memory is released when this returns, before the golden check runs the engine
    (Jetson memory is shared between CPU and GPU).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    validate_dla(config.dla_core, config.gpu_fallback, builder.num_DLA_cores)
    network, _parser = _parse_network(trt, builder, logger, config.onnx_path, plan.mode)
    build_config = builder.create_builder_config()
    warnings: list[str] = []
    built_with = _built_with(config, plan)
    _configure(trt, builder, network, build_config, config, plan, built_with, warnings)
    cache, write_cache_back = _attach_timing_cache(build_config, config.timing_cache, warnings)
    serialized = _serialize(trt, builder, network, build_config, config, plan, built_with)
    if write_cache_back:
        write_cache_file(config.timing_cache, bytes(memoryview(cache.serialize())))
    engine = EngineBytes(plan.meta.replace(precision=plan.precision), serialized,
                         trt.__version__, *gpu_info())
    return engine, built_with, warnings


def _serialize(trt: Any, builder: trt.Builder, network: trt.INetworkDefinition,
               build_config: trt.IBuilderConfig, config: EngineBuildConfig, plan: BuildPlan,
               built_with: dict[str, Any]) -> bytes:
    """The serialized plan; builder-flag INT8 calibrates first (a failure inside the
    calibrator fails the build instead of ending calibration early)."""
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
    return bytes(memoryview(serialized))


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
    data = read_cache_file(path)
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
