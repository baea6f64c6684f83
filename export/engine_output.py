"""What ``build-engine`` writes once TensorRT has produced a plan.

The golden check against ONNX Runtime (``export.golden``), the engine file with
its result in the header, the JSON report beside it, the per-layer report of
TensorRT's engine inspector (``<out>.layers.json``) and, on request, the bare
plan for other TensorRT tools. The summaries are pure functions (tested on a
CPU); the TensorRT calls are type-checked against tensorrt-stubs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.engine_plan import BuildPlan, EngineBuildConfig
from export.golden import (
    GoldenReport,
    backend_runner,
    golden_check,
    onnxruntime_runner,
    tolerance_key,
)
from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.backends.tensorrt_backend import TensorRTBackend
from runtime.engine_file import write_engine_file
from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta


@dataclass(frozen=True)
class EngineBytes:
    meta: ModelMeta  # header metadata (precision = the engine's)
    plan: bytes  # serialized TensorRT plan
    trt_version: str
    gpu_name: str
    capability: str

    def write(self, path: str, built_with: dict[str, Any]) -> None:
        """The detr-edge engine file (header + plan), atomically."""
        write_engine_file(path, self.meta, self.plan, tensorrt_version=self.trt_version,
                          gpu_name=self.gpu_name, compute_capability=self.capability,
                          built_with=built_with)


def verify_and_write(config: EngineBuildConfig, plan: BuildPlan, engine: EngineBytes,
                      built_with: dict[str, Any], warnings: list[str]) -> GoldenReport | None:
    """Golden check of the new engine, then the final engine file and JSON report.

    The engine is first written to ``<out>.unverified`` and run from there
    with the runtime's own TensorRT backend. Only a passing (or ``--verify
    warn``) engine becomes ``<out>``, with the result in its header; a failing
    one stays at ``<out>.unverified`` for inspection.
    """
    if config.verify == "off":
        built_with["golden"] = {"verify": "off"}
        engine.write(config.out_path, built_with)
        if config.plan_path is not None:
            write_plan_file(config.plan_path, engine.plan)
        return None
    unverified = f"{config.out_path}.unverified"
    engine.write(unverified, built_with)
    backend = TensorRTBackend(unverified)
    try:
        report = golden_check(
            onnxruntime_runner(config.onnx_path),
            backend_runner(backend), plan.meta,
            tolerance_key(plan.precision, plan.meta.precision),
            data_dir=config.verify_data or config.calib_data, num_images=config.verify_images,
            batch=plan.meta.batch_size or plan.profiles[0].opt[0], seed=config.seed)
    finally:
        backend.close()
    built_with["golden"] = report.to_dict()
    atomic_write_text(f"{config.out_path}.golden.json",
                      json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    if not report.passed and config.verify == "fail":
        raise ModelFormatError(config.out_path, f"{report.format()}; the engine is kept at "
                               f"{unverified} (--verify warn accepts it)")
    if not report.passed:
        warnings.append(report.format())
    engine.write(config.out_path, built_with)
    Path(unverified).unlink(missing_ok=True)
    if config.plan_path is not None:
        write_plan_file(config.plan_path, engine.plan)
    return report


# ---- interop and inspection ---------------------------------------------------------------

def write_layer_report(config: EngineBuildConfig, plan: BuildPlan,
                       engine: EngineBytes, built_with: dict[str, Any],
                       warnings: list[str]) -> None:
    """``<out>.layers.json`` (engine inspector) and its summary in ``built_with``."""
    report = layer_report(engine.plan)
    if config.dla_core is not None:
        # The inspector shows DLA loadables as fused nodes; the per-layer placement
        # comes from IBuilderConfig.can_run_on_DLA before the build.
        report["dla_placement"] = built_with.get("dla_placement")
    atomic_write_text(f"{config.out_path}.layers.json",
                      json.dumps(report, indent=1, sort_keys=True) + "\n")
    built_with["layers"] = report["summary"]
    warning = precision_warning(report["summary"], plan.precision)
    if warning:
        warnings.append(warning)


def write_plan_file(path: str, plan: bytes) -> None:
    """The bare serialized plan (no detr-edge header), what trtexec ``--loadEngine``,
    DeepStream and Triton's TensorRT backend load."""
    if not plan:
        raise InputError(path, "refusing to write an empty plan")
    atomic_write_bytes(path, plan)


_PRECISION_WORDS = (("fp32", ("FP32", "Float")), ("fp16", ("FP16", "Half")),
                    ("int8", ("Int8", "INT8")), ("bf16", ("BFloat16",)),
                    ("int32", ("Int32",)), ("int64", ("Int64",)), ("bool", ("BOOL", "Bool")))


def _tensor_precision(fmt: str) -> str:
    """'Row major linear FP16 format' / 'Half' -> 'fp16' (the engine inspector's
    "Format/Datatype" strings; trex maps the same words)."""
    words = fmt.replace(",", " ").split()
    for name, keys in _PRECISION_WORDS:
        if any(k in words for k in keys):
            return name
    return "other"


def summarize_layers(info: dict[str, Any]) -> dict[str, Any]:
    """Counts over the engine inspector's JSON (``{"Layers": [...], "Bindings": [...]}``
    at ``ProfilingVerbosity.DETAILED``): layers per output precision and per type.

    A layer's precision is that of its first output. ``{ForeignNode[...]}``
    layers are fused subgraphs (Myelin on the GPU, loadables on DLA), one count each.
    """
    layers = info.get("Layers")
    if not isinstance(layers, list) or (layers and not isinstance(layers[0], dict)):
        raise ValueError("engine inspector output has no detailed 'Layers' list (build with "
                         "ProfilingVerbosity.DETAILED)")
    by_precision: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for layer in layers:
        outputs = layer.get("Outputs") or [{}]
        precision = _tensor_precision(str(outputs[0].get("Format/Datatype", "")))
        by_precision[precision] = by_precision.get(precision, 0) + 1
        kind = str(layer.get("LayerType", "unknown"))
        by_type[kind] = by_type.get(kind, 0) + 1
    return {"layers": len(layers), "by_output_precision": by_precision, "by_type": by_type}


def precision_warning(summary: dict[str, Any], engine_precision: str) -> str | None:
    """A warning when no layer runs in the precision the engine is labelled with
    (e.g. an FP16 build that silently stayed FP32)."""
    counts = summary.get("by_output_precision", {})
    if engine_precision in ("fp16", "int8") and summary.get("layers") \
            and not counts.get(engine_precision):
        return (f"engine is labelled {engine_precision} but no layer outputs "
                f"{engine_precision} (per-layer precision: {counts})")
    return None


def layer_report(plan: bytes) -> dict[str, Any]:
    """The engine inspector's per-layer JSON of ``plan`` plus :func:`summarize_layers`.

    Layer names and parameters are only present when the builder config had
    ``profiling_verbosity = ProfilingVerbosity.DETAILED`` (the builder sets it).
    """
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ModelFormatError("<plan>", "TensorRT could not deserialize the new plan")
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return {"summary": summarize_layers(info), "engine_information": info}
