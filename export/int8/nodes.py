"""Q/DQ helpers: which nodes to quantize, how they group into DETR blocks, and
verification that a quantized graph is what TensorRT's explicit-quantization
path accepts.

TensorRT's rules checked here (TensorRT developer guide, "Explicit
quantization"): INT8 only, symmetric (zero point 0, stored as int8), scales
positive constants; activations per-tensor; weights per-channel along the
output-channel axis: 0 for Conv (``[C_out, C_in, kh, kw]``), the last axis for
MatMul (``[K, N]`` weights, ``y = x @ W``), 0 for Gemm with ``transB=1``
(``[N, K]``) else 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
HEAD_NAMES = ("class_embed", "bbox_embed")  # output heads: always kept in FP32
# Walking up from a graph output, these ops end a head (a LayerNorm, plain or
# decomposed into ReduceMean/Sub/Pow/Sqrt/Div, is the decoder output norm).
_HEAD_STOP_OPS = {"LayerNormalization", "ReduceMean", "Div", "Sqrt", "Softmax"}


def constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """Value of initializer / Constant-node output ``name`` (None if not constant)."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return names


def weight_input(model: onnx.ModelProto, node: onnx.NodeProto,
                 constants: set[str] | None = None) -> str | None:
    """Name of the constant weight input of a Conv/MatMul/Gemm, else None."""
    constants = _constants(model) if constants is None else constants
    if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
        return None
    return node.input[1] if node.input[1] in constants else None


def quantizable_nodes(model: onnx.ModelProto, quantize_attention: bool = False
                      ) -> list[onnx.NodeProto]:
    """Weight-bearing Conv/MatMul/Gemm nodes (+ activation x activation MatMuls,
    i.e. attention ``Q K^T`` and ``A V``, when ``quantize_attention``).

    Every node must have a name: ORT's ``nodes_to_exclude`` works by name. Nodes
    that do not depend on the image input are skipped: with a mask input, the
    position encoding's cumulative sums are MatMuls of the 0/1 mask with a 0/1
    triangle, and when the exporter folds the triangle into a constant (dynamo
    does, for a static canvas) they look like weight ops. They count pixels; they
    are not features to quantize.
    """
    constants = _constants(model)
    on_image_path = _image_dependent(model)
    out = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or not any(i in on_image_path for i in node.input):
            continue
        if weight_input(model, node, constants) is not None or (
                quantize_attention and node.op_type == "MatMul"):
            out.append(node)
    return out


def _image_dependent(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors that depend on a floating-point graph input (the images)."""
    import onnx

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    reached = {i.name for i in model.graph.input if i.type.tensor_type.elem_type in floats}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if any(name in reached for name in node.input):
            reached.update(node.output)
    return reached


def _key(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    """Node name + its initializer input names, '/' -> '.', for pattern matching.

    Initializer names keep the PyTorch parameter names (``class_embed.weight``)
    even when the exporter gives nodes generic names (``node_linear_5``)."""
    inits = {i.name for i in model.graph.initializer}
    parts = [node.name] + [i for i in node.input if i in inits]
    return " ".join(parts).replace("/", ".")


def head_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of nodes that belong to ``class_embed`` / ``bbox_embed``.

    By name where the export kept parameter names, and structurally: every
    weight op reachable upwards from a graph output without crossing the
    decoder's output LayerNorm (which covers anonymous exports too).
    """
    heads = {n.name for n in model.graph.node
             if n.op_type in WEIGHT_OPS and any(h in _key(model, n) for h in HEAD_NAMES)}
    producer = {out: node for node in model.graph.node for out in node.output}
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen or node.op_type in _HEAD_STOP_OPS:
            continue
        seen.add(node.name)
        if node.op_type in WEIGHT_OPS:
            heads.add(node.name)
        stack.extend(node.input)
    return heads


_BLOCK_PATTERNS = [
    (re.compile(r"encoder\.layers\.(\d+)"), "encoder.layers.{}"),
    (re.compile(r"decoder\.layers\.(\d+)"), "decoder.layers.{}"),
    (re.compile(r"(?:body\.|backbone\S*\.)(layer\d)"), "backbone.{}"),
    (re.compile(r"input_proj"), "input_proj"),
    (re.compile(r"body\.(?:conv1|bn1)\b"), "backbone.stem"),
    (re.compile(r"(class_embed|bbox_embed)"), "{}"),
    (re.compile(r"backbone"), "backbone.stem"),
]


def block_of(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    """DETR block of a node: ``backbone.stem``, ``backbone.layer1``..``layer4``,
    ``input_proj``, ``encoder.layers.i``, ``decoder.layers.i``; a node whose
    names match none is its own block (its node name)."""
    key = _key(model, node)
    for pattern, template in _BLOCK_PATTERNS:
        match = pattern.search(key)
        if match:
            return template.format(*match.groups())
    return node.name


def group_blocks(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto]) -> dict[str, list[str]]:
    """``{block: [node names]}`` in graph order."""
    blocks: dict[str, list[str]] = {}
    for node in nodes:
        blocks.setdefault(block_of(model, node), []).append(node.name)
    return blocks


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes a unique name (in place): exclusion lists are by name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


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
