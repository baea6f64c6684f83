"""Thin detr-edge runtime: numpy + pillow, lazily onnxruntime / TensorRT.

Never imports torch. ``Detector`` is imported lazily so that light modules
(``runtime.errors``, ``runtime.cli``) stay cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Detections", "Detector"]


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from runtime.detector import Detector

        return Detector
    if name == "Detections":
        from runtime.decode import Detections

        return Detections
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
