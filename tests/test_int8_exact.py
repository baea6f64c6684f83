"""INT8 on CPUs whose ONNX Runtime int8 kernels saturate (AVX2 without VNNI).

The TensorRT format keeps 8-bit weights; the quantizer's accuracy decisions run it
with ``exact_int8`` (Q/DQ unfused: TensorRT's arithmetic on any CPU). The cpu
format uses 7-bit weights by default, which never saturate. Checked on the real
DETR-tiny graph (random init) of ``tiny_detr_like``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export.int8.calib_data import iter_feeds, list_images
from export.int8.config import QuantizeConfig
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend, saturates_here
from runtime.cpu_features import int8_dot_product_safe
from runtime.errors import InputError


def _relative_logits_error(models: dict[str, Path], name: str, exact: bool) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = OnnxRuntimeBackend(models["fp32"], providers="cpu")
        got = OnnxRuntimeBackend(models[name], providers="cpu", exact_int8=exact)
    errs = []
    for feed in iter_feeds(list_images(models["images"])[:4], ref.meta, 1):
        (l32, _), (l8, _) = ref.infer(feed["images"], None), got.infer(feed["images"], None)
        errs.append(np.abs(l8 - l32).mean() / np.abs(l32).mean())
    return float(np.mean(errs))


def test_exact_int8_is_close_to_fp32_on_any_cpu(detr_tiny_int8: dict[str, Any]) -> None:
    # Unfused Q/DQ: ~0.05 here; ORT's fused kernels on an AVX2-only CPU: ~0.20.
    assert _relative_logits_error(detr_tiny_int8, "tensorrt", exact=True) < 0.1


def test_cpu_format_has_7bit_weights_and_stays_close(detr_tiny_int8: dict[str, Any]) -> None:
    model = onnx.load(str(detr_tiny_int8["cpu"]))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [inits[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].ndim > 1]
    assert weights and all(np.abs(w.astype(np.int32)).max() <= 64 for w in weights)
    meta = OnnxRuntimeBackend(detr_tiny_int8["cpu"], providers="cpu").meta
    assert meta.extra["int8"]["weight_bits"] == 7 and not saturates_here(meta)
    # 7-bit weights never saturate, so the fused kernels are close on every CPU.
    assert _relative_logits_error(detr_tiny_int8, "cpu", exact=False) < 0.1


def test_saturation_warning_only_where_it_applies(detr_tiny_int8: dict[str, Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OnnxRuntimeBackend(detr_tiny_int8["tensorrt"], providers="cpu")
    warned = [w for w in caught if "VNNI" in str(w.message)]
    assert bool(warned) == (not int8_dot_product_safe())


def test_weight_bits_option() -> None:
    with pytest.raises(InputError, match="--weight-bits"):
        QuantizeConfig(target="tensorrt", weight_bits=7).validate()
    with pytest.raises(InputError, match="--weight-bits"):
        QuantizeConfig(target="cpu", weight_bits=6).validate()
    QuantizeConfig(target="cpu", weight_bits=8).validate()
