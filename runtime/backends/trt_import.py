"""Importing TensorRT and cuda-python, and reading cuda-python's results.

One place for the engine builder (``export.engine_builder``, ``export.calibrator``,
``export.trt_compat``) and the native backend (``runtime.backends.tensorrt_backend``):
both are imported only when called, and a missing library is a
``BackendUnavailableError`` saying what to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from runtime.errors import BackendUnavailableError

INSTALL_HINT = ("install 'detr-edge[trt]' on an x86 GPU machine; on Jetson it comes with "
                "JetPack (python3-libnvinfer)")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; ``BackendUnavailableError`` if it is absent.

    ``tensorrt-stubs`` installs a ``tensorrt/`` folder holding only ``.pyi`` files,
    which Python imports as an empty namespace package: a module without ``Runtime``
    and ``__version__`` is the stubs, not TensorRT.
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT not installed ({exc}); {INSTALL_HINT}") from exc
    if not hasattr(tensorrt, "Runtime") or not hasattr(tensorrt, "__version__"):
        raise BackendUnavailableError("TensorRT not installed (only the tensorrt-stubs type "
                                      f"stubs were found); {INSTALL_HINT}")
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``; ``cuda.cudart``
    before cuda-python 12.6); ``BackendUnavailableError`` if absent."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        try:
            return importlib.import_module("cuda.cudart")
        except ImportError as exc:
            raise BackendUnavailableError(
                f"cuda-python not installed ({exc}); TensorRT's device buffers need it "
                "(pip install 'detr-edge[trt]')") from exc


def cuda_call(result: Any, what: str) -> Any:
    """Unwrap a cuda-python ``(err, *values)`` result: None, the one value, or a tuple of
    them; ``BackendUnavailableError`` naming ``what`` on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA error in {what}: {err!r}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_info(device: int = 0) -> tuple[str, str]:
    """``(gpu_name, compute_capability)`` of a CUDA device, e.g. ("NVIDIA H100", "9.0"): what
    an engine header records at build time and the backend compares before loading."""
    cudart = import_cudart()
    prop = cuda_call(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(name).rstrip("\x00"), f"{prop.major}.{prop.minor}"
