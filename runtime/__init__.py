"""Thin detr-edge runtime: numpy + pillow, lazily onnxruntime / TensorRT.

Never imports torch. ``Detector`` is imported lazily so that light modules
(``runtime.errors``, ``runtime.cli``) stay cheap.
"""

from __future__ import annotations

from runtime.lazy import lazy_getattr

__all__ = ["Detections", "Detector"]

_EXPORTS = {
    "Detector": "runtime.detector",
    "Detections": "runtime.decode",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS)
