"""Which nodes INT8 quantizes and how they group into DETR blocks: weight-bearing
Conv/MatMul/Gemm on the image path, never the output heads ``class_embed`` /
``bbox_embed``; blocks (backbone stage, encoder/decoder layer, ...) are the unit
of the FP32-fallback search. ``export.int8.qdq_check`` verifies the result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from export.onnx_graph import constant_names, producers

if TYPE_CHECKING:
    import onnx

WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
HEAD_NAMES = ("class_embed", "bbox_embed")  # output heads: always kept in FP32
# Walking up from a graph output, these ops end a head (a LayerNorm, plain or
# decomposed into ReduceMean/Sub/Pow/Sqrt/Div, is the decoder output norm).
_HEAD_STOP_OPS = {"LayerNormalization", "ReduceMean", "Div", "Sqrt", "Softmax"}


def weight_input(model: onnx.ModelProto, node: onnx.NodeProto,
                 constants: set[str] | None = None) -> str | None:
    """Name of the constant weight input of a Conv/MatMul/Gemm, else None."""
    constants = constant_names(model) if constants is None else constants
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
    constants = constant_names(model)
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
    producer = producers(model.graph)
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
