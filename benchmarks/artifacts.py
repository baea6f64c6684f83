"""Which artifacts a benchmark run has, which row each belongs to, and whether
the TensorRT rows can run on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.engine_file import is_engine_file, read_engine_header
from runtime.errors import InputError


def find_artifacts(folder: str | None) -> dict[tuple[str, str], Path]:
    """``{(backend, precision): path}`` for the ONNX models and engines in ``folder``
    (precision read from each file's detr-edge metadata, not its name)."""
    found: dict[tuple[str, str], Path] = {}
    if folder is None:
        return found
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "artifacts folder not found")
    from export.onnx_meta import load_onnx, read_meta

    for path in sorted(root.glob("*.onnx")):
        meta = read_meta(load_onnx(path), path)
        found.setdefault(("onnxruntime", row_precision(meta)), path)
    for path in sorted(root.glob("*.engine")):
        if is_engine_file(path):
            found.setdefault(("tensorrt", read_engine_header(path).meta.precision), path)
    return found


def row_precision(meta: Any) -> str:
    """The row an ONNX artifact belongs to: its precision, and "int8-cpu" for an
    INT8 model in ONNX Runtime's uint8 Q/DQ format (``quantize --target cpu``)."""
    if meta.int8_format == "cpu":
        return "int8-cpu"
    return str(meta.precision)


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT rows cannot run here, or None when they can (TensorRT, cuda-python
    and a CUDA device; asked through cuda-python, so the device needs no torch)."""
    from runtime.backends.tensorrt_backend import tensorrt_available

    return tensorrt_available()
