"""Verification that a quantized graph is in the Q/DQ format it claims.

TensorRT's rules checked here (TensorRT developer guide, "Explicit
quantization"): INT8 only, symmetric (zero point 0, stored as int8), scales
positive constants; activations per-tensor; weights per-channel along the
output-channel axis: 0 for Conv (``[C_out, C_in, kh, kw]``), the last axis for
MatMul (``[K, N]`` weights, ``y = x @ W``), 0 for Gemm with ``transB=1``
(``[N, K]``) else 1. The cpu format (``export.int8.qdq_insert``) differs only in
its uint8 activation zero points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from export.int8.nodes import WEIGHT_OPS
from export.onnx_graph import constant_value

if TYPE_CHECKING:
    import onnx


@dataclass
class QDQInfo:
    """What a Q/DQ graph quantizes, and what is wrong with it for TensorRT."""

    num_q: int = 0  # QuantizeLinear nodes
    num_dq: int = 0  # DequantizeLinear nodes
    quantized: set[str] = field(default_factory=set)  # weight ops fed by a DQ'd weight
    weight_axes: dict[str, int | None] = field(default_factory=dict)  # op name -> DQ axis
    problems: list[str] = field(default_factory=list)  # empty = TensorRT-compatible


def _expected_axis(node: onnx.NodeProto, weight_rank: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return weight_rank - 1  # MatMul: [..., K, N], output channels last


def inspect_qdq(model: onnx.ModelProto, target: str = "tensorrt") -> QDQInfo:
    """Check every Q/DQ node: positive constant scale, per-tensor activations,
    per-channel weights on the output-channel axis, and zero points: int8 0
    everywhere for ``target="tensorrt"``; for ``target="cpu"`` (ONNX Runtime's
    uint8 format, ``export.int8.qdq_insert``) int8 0 on weights, uint8 on activations."""
    info = QDQInfo()
    dq_of = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        info.num_q += node.op_type == "QuantizeLinear"
        info.num_dq += node.op_type == "DequantizeLinear"
        label = node.name or node.output[0]
        scale = constant_value(model, node.input[1])
        zero = constant_value(model, node.input[2]) if len(node.input) > 2 and node.input[2] \
            else None
        data = constant_value(model, node.input[0]) if node.op_type == "DequantizeLinear" \
            else None
        if zero is None:
            info.problems.append(f"{label}: no constant zero point")
        elif target == "cpu" and data is None:
            if zero.dtype != np.uint8:
                info.problems.append(f"{label}: activation zero point is {zero.dtype}, "
                                     "the cpu format uses uint8")
        elif zero.dtype != np.int8 or np.any(zero != 0):
            info.problems.append(f"{label}: zero point {zero.dtype} {zero.ravel()[:3]} "
                                 "is not int8 0")
        if scale is None or not np.all(scale > 0):
            info.problems.append(f"{label}: scale is not a positive constant")
        if data is None and scale is not None and scale.size != 1:
            info.problems.append(f"{label}: activation scale is per-channel ({scale.size})")
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        dq = dq_of.get(node.input[1])
        weight = constant_value(model, dq.input[0]) if dq is not None else None
        if dq is None or weight is None:
            continue
        info.quantized.add(node.name)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), None)
        scale = constant_value(model, dq.input[1])
        per_channel = scale is not None and scale.size > 1
        info.weight_axes[node.name] = axis if per_channel else None
        if weight.dtype != np.int8:
            info.problems.append(f"{node.name}: weight stored as {weight.dtype}, not int8")
        expected = _expected_axis(node, weight.ndim)
        if not per_channel:
            info.problems.append(f"{node.name}: weight quantized per-tensor, not per-channel")
        elif (axis if axis is None or axis >= 0 else axis + weight.ndim) != expected:
            info.problems.append(f"{node.name}: weight axis {axis}, expected {expected}")
    return info


def scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """``{Q/DQ node input tensor: scale}`` (for determinism checks and reports)."""
    out = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            value = constant_value(model, node.input[1])
            if value is not None:
                out[f"{node.op_type}:{node.input[0]}"] = value
    return out
