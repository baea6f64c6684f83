"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

onnxruntime is imported when the backend is created, so ``import runtime``
works on an install without it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Backend, check_batch
from runtime.backends.model_io import TensorSpec, check_model_io
from runtime.errors import BackendUnavailableError, InputError, ModelFormatError, first_line
from runtime.fused import check_frames, fused_source_size
from runtime.metadata import ModelMeta, meta_from_properties

# Preference of providers='auto': fastest first, CPU last (always available).
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
ProviderSpec = str | tuple[str, dict[str, Any]]  # name, or (name, provider options)


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime not installed (pip install 'detr-edge[onnx]' or 'detr-edge[device]', or "
            "onnxruntime-gpu for CUDA/TensorRT providers)") from exc
    return onnxruntime


def resolve_providers(providers: Sequence[ProviderSpec] | str | None,
                      available: Sequence[str]) -> list[ProviderSpec]:
    """Expand ``None``/'auto' and aliases ("cpu", "cuda", "tensorrt") into ORT provider specs.

    An explicitly requested provider that this onnxruntime build lacks raises
    ``BackendUnavailableError`` instead of ORT's silent fallback to CPU, so a
    benchmark row labelled "CUDA" never measures the CPU.
    """
    if providers is None or providers == "auto":
        return [p for p in AUTO_ORDER if p in available]
    if isinstance(providers, str):
        providers = [providers]
    out: list[ProviderSpec] = []
    for spec in providers:
        name, options = (spec, None) if isinstance(spec, str) else spec
        name = ALIASES.get(name.lower(), name)
        if name not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime provider {name} is not available in this onnxruntime build "
                f"(available: {', '.join(available)})")
        out.append(name if options is None else (name, dict(options)))
    if not out:
        raise InputError("providers", "empty provider list")
    return out


@contextlib.contextmanager
def ort_failures(source: str | os.PathLike[str], doing: str = "while running the model"
                 ) -> Iterator[None]:
    """ONNX Runtime's own exceptions (a Reshape that fails at run time, an input of
    the wrong type: the model file's fault) -> one-line ``ModelFormatError`` naming
    ``source``. Other exceptions pass through: they are not the file's fault."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise ModelFormatError(source, f"ONNX Runtime failed {doing} "
                               f"({first_line(exc)})") from exc


def read_onnx_meta(session: Any, path: str | os.PathLike[str]) -> ModelMeta:
    """The detr-edge ``ModelMeta`` stored in the model's metadata_props."""
    return meta_from_properties(session.get_modelmeta().custom_metadata_map, str(path))


# ONNX Runtime's type strings -> numpy (the types a detr-edge graph's I/O can have).
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(double)": np.float64}


def session_tensors(session: Any) -> dict[str, TensorSpec]:
    """The session's inputs and outputs as ``TensorSpec`` (ORT reports a dynamic
    dimension as a string or None: ``-1`` here)."""
    specs = {}
    for is_input, values in ((True, session.get_inputs()), (False, session.get_outputs())):
        for value in values:
            dtype = _ORT_DTYPES.get(value.type)
            specs[value.name] = TensorSpec(
                value.name, is_input, None if dtype is None else np.dtype(dtype),
                tuple(d if isinstance(d, int) and d >= 0 else -1 for d in value.shape))
    return specs


def saturates_here(meta: ModelMeta) -> bool:
    """An INT8 model with 8-bit weights (TensorRT's format, or a cpu-format model made
    with ``--weight-bits 8``) on a CPU where ORT's int8 kernels saturate."""
    from runtime.cpu_features import int8_dot_product_safe

    if meta.precision != "int8" or int8_dot_product_safe():
        return False
    int8 = meta.extra.get("int8") if isinstance(meta.extra, dict) else None
    bits = int8.get("weight_bits", 8) if isinstance(int8, dict) else 8
    return bits == 8


def session_options(ort: Any, intra_op_threads: int | None, exact_int8: bool,
                     spinning: bool | None) -> Any:
    """``onnxruntime.SessionOptions`` for :class:`OnnxRuntimeBackend`'s arguments."""
    options = ort.SessionOptions()
    # ORT's C++ logger writes warnings and errors straight to stderr, ahead of the
    # one error line; its failures reach us as exceptions anyway (ort_failures).
    options.log_severity_level = 4  # fatal only
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if spinning is None:
        from runtime.ort_spinning import default_spinning

        spinning = default_spinning()  # off on <= 2 CPUs (runtime/ort_spinning.py)
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if spinning else "0")
    if exact_int8:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


class OnnxRuntimeBackend(Backend):
    """An ``onnxruntime.InferenceSession`` on an exported detr-edge ONNX model."""

    def __init__(self, path: str | os.PathLike[str],
                 providers: Sequence[ProviderSpec] | str | None = None,
                 intra_op_threads: int | None = None, exact_int8: bool = False,
                 spinning: bool | None = None) -> None:
        """``spinning``: whether idle intra-op threads busy-wait for work (None =
        ``runtime.ort_spinning.default_spinning``: ORT's default, on, except on
        machines with <= 2 CPUs). Off where other threads need the cores (the stream
        pipeline).
        ``exact_int8``: graph optimisations off, so Q/DQ pairs run as written
        (float DequantizeLinear -> op): the exact integer semantics TensorRT computes,
        on any CPU. ORT's fused int8 kernels saturate on AVX2 CPUs without VNNI
        (``runtime.cpu_features``); slower, for accuracy decisions, not for speed."""
        ort = _import_ort()
        p = Path(path)
        if not p.is_file():
            raise InputError(p, "model file not found")
        chosen = resolve_providers(providers, ort.get_available_providers())
        options = session_options(ort, intra_op_threads, exact_int8, spinning)
        try:
            self.session = ort.InferenceSession(str(p), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise ModelFormatError(p, f"not a loadable ONNX model ({first_line(exc)})") from exc
        self.meta = read_onnx_meta(self.session, p)
        if not exact_int8 and saturates_here(self.meta):
            warnings.warn(f"{p.name}: this CPU has AVX2 but no VNNI, where ONNX Runtime's int8 "
                          "kernels saturate with 8-bit weights (less accurate); quantize with "
                          "--target cpu (7-bit weights) for CPU deployments", RuntimeWarning,
                          stacklevel=2)
        self.path = p
        self.providers = list(self.session.get_providers())
        self.name = f"onnxruntime[{self.providers[0]}]"
        inputs = check_model_io(self.meta, session_tensors(self.session), p)
        self.fused = fused_source_size(self.meta)  # uint8 [B, Hs, Ws, 3] frames instead
        self.batch_size = inputs.batch_size
        self.has_mask = inputs.has_mask
        # FP16 graphs may keep FP16 inputs; feed what the graph declares.
        self._image_dtype = inputs.images_dtype

    def infer(self, images: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        feed: dict[str, np.ndarray]
        if self.fused is not None:  # uint8 [B, Hs, Ws, 3] frames: the graph preprocesses
            feed = {"images": check_frames(self.meta, images, self.batch_size)}
        else:
            images, mask = check_batch(self.meta, images, mask, self.batch_size)
            feed = {"images": images.astype(self._image_dtype, copy=False)}
            if self.has_mask and mask is not None:
                feed["mask"] = mask
        with ort_failures(self.path):
            logits, boxes = self.session.run(["logits", "boxes"], feed)
        return np.asarray(logits, dtype=np.float32), np.asarray(boxes, dtype=np.float32)

    def close(self) -> None:
        self.__dict__.pop("session", None)
