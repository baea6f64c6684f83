"""ONNX export (FP32/FP16), TensorRT-readiness check and INT8 tools.

The API is exposed lazily through a module-level ``__getattr__`` so that
``import export.commands.check_onnx`` (and ``detr-edge --help``) does not import
torch, onnx or onnxruntime.
"""

from __future__ import annotations

from runtime.lazy import lazy_getattr

_LAZY = {
    "export_onnx": "export.onnx_export",
    "ExportConfig": "export.onnx_export",
    "ExportResult": "export.onnx_export",
    "ExportWrapper": "export.export_wrapper",
    "convert_to_fp16": "export.fp16",
    "FP16Config": "export.fp16",
    "check_onnx": "export.check_onnx",
    "CheckConfig": "export.check_onnx",
    "CheckReport": "export.check_onnx",
    "collect_activation_ranges": "export.activation_ranges",
    "parity_report": "export.parity",
    "write_meta": "export.onnx_meta",
    "read_meta": "export.onnx_meta",
    "load_onnx": "export.onnx_meta",
    "quantize_int8": "export.int8.quantize",
    "QuantizeConfig": "export.int8.config",
    "QuantizeReport": "export.int8.report",
    "inspect_qdq": "export.int8.qdq_check",
    "build_engine": "export.engine_builder",
    "EngineBuildConfig": "export.engine_builder",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
