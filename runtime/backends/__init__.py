"""Inference backends: ONNX Runtime (CPU/CUDA/TensorRT EP) and native TensorRT.

Each backend turns a preprocessed ``images`` batch (and optional ``mask``) into
the raw ``(logits, boxes)`` outputs; preprocessing and decoding stay in
``runtime.preprocess`` / ``runtime.decode`` so every backend is fed and read
the same way. Backend modules import their heavy library lazily, on
construction.
"""

from __future__ import annotations

from runtime.backends.base import Backend, check_batch

__all__ = ["Backend", "check_batch"]
