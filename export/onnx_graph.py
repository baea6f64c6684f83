"""Lookups on an ONNX graph that the graph passes share: which node produces a
tensor, which nodes read it, which tensors are constants and their values.

All of them look at the top-level graph only (the passes do not enter If/Loop
bodies). Build a lookup once per pass, before the pass edits the graph.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def producer_index(graph: onnx.GraphProto) -> dict[str, int]:
    """``{tensor: index in graph.node of the node that outputs it}``."""
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """``{tensor: node that outputs it}``."""
    nodes = list(graph.node)
    return {out: nodes[i] for out, i in producer_index(graph).items()}


def consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """``{tensor: [(node, input index)]}``: every node input that reads the tensor."""
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = collections.defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                uses[name].append((node, index))
    return uses


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors known at build time: initializers and Constant outputs."""
    names = {init.name for init in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def constant_value(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """Value of the initializer / Constant-node output ``name`` (None if not a constant)."""
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
