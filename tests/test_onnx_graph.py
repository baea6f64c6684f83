"""The shared ONNX graph lookups (export/onnx_graph.py) on a hand-built graph, and
the INT8 format read from the model metadata (ModelMeta.int8_format)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper

from export.onnx_graph import constant_names, constant_value, consumers, producer_index, producers
from runtime.metadata import INT8_FORMATS, ModelMeta


def _graph() -> onnx.ModelProto:
    """x -> Add(w) -> y -> Mul(c) -> z, with y also read by Relu; w an initializer, c a
    Constant node."""
    nodes = [
        helper.make_node("Constant", [], ["c"], name="const",
                         value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Add", ["x", "w"], ["y"], name="add"),
        helper.make_node("Mul", ["y", "c"], ["z"], name="mul"),
        helper.make_node("Relu", ["y"], ["r"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("z", "r")],
        initializer=[numpy_helper.from_array(np.array([3.0], np.float32), "w")])
    return helper.make_model(graph)


def test_producers_consumers_and_constants() -> None:
    model = _graph()
    assert producer_index(model.graph) == {"c": 0, "y": 1, "z": 2, "r": 3}
    assert {t: n.name for t, n in producers(model.graph).items()} == {
        "c": "const", "y": "add", "z": "mul", "r": "relu"}
    uses = consumers(model.graph)
    assert [(n.name, i) for n, i in uses["y"]] == [("mul", 0), ("relu", 0)]
    assert [(n.name, i) for n, i in uses["c"]] == [("mul", 1)]
    assert "z" not in uses  # a graph output nothing reads
    assert constant_names(model) == {"w", "c"}
    np.testing.assert_array_equal(constant_value(model, "w"), [3.0])
    np.testing.assert_array_equal(constant_value(model, "c"), [2.0])
    assert constant_value(model, "y") is None


def test_int8_format_comes_from_the_metadata() -> None:
    meta = ModelMeta(preset="t", input_height=32, input_width=32, class_names=["a"],
                     label_map=[1])
    assert meta.int8_format is None  # FP32
    assert meta.replace(precision="fp16", extra={"int8": {"target": "cpu"}}).int8_format is None
    # An INT8 file written before the cpu format existed is in TensorRT's format.
    assert meta.replace(precision="int8").int8_format == "tensorrt"
    for fmt in INT8_FORMATS:
        assert meta.replace(precision="int8", extra={"int8": {"target": fmt}}).int8_format == fmt
