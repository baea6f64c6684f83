"""ONNX Runtime's CPU provider runs our INT8 Q/DQ graphs as integer kernels.

ORT fuses ``DQ -> Conv -> Q`` into QLinearConv only after rewriting the int8
Q->DQ pairs to uint8, which it does only for a Q with one consumer; a ResNet
block input feeds conv1 *and* the residual Add, so its Conv stayed FP32.
``export.int8.ort_fusion_layout.dedicate_activation_qdq`` gives every consumer its own
pair; ``quantize_add_before_relu`` lets ORT run the residual Add as QLinearAdd.
These tests check the graph ORT really runs (no timing): a hand-built residual
block here, the real DETR-tiny graph in ``test_quantize.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from export.int8.ort_fusion_layout import (
    apply_ort_fusion_layout,
    dedicate_activation_qdq,
    op_counts,
    ort_optimized_graph,
    quantize_add_before_relu,
    unfused_weight_ops,
)
from export.int8.qdq_check import inspect_qdq

C = 8  # channels of the toy block


class _Graph:
    """Builds a QDQ graph like ORT's quantizer writes it: symmetric int8, zero
    point 0, per-channel weights on axis 0, FP32 bias."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def qdq(self, tensor: str, scale: float) -> str:
        s = self.const(f"{tensor}_scale", np.array(scale, np.float32))
        z = self.const(f"{tensor}_zp", np.array(0, np.int8))
        return self.node("DequantizeLinear",
                         [self.node("QuantizeLinear", [tensor, s, z], f"{tensor}_q"), s, z],
                         f"{tensor}_dq")

    def conv(self, x: str, name: str, k: int, c_in: int = C) -> str:
        """DQ'd weights [C, c_in, k, k] -> Conv -> Q/DQ of the output."""
        w = self.rng.normal(0, 0.2, (C, c_in, k, k)).astype(np.float32)
        w_scale = np.abs(w).reshape(C, -1).max(1) / 127
        w_q = np.round(w / w_scale[:, None, None, None]).astype(np.int8)
        w_dq = self.node("DequantizeLinear", [
            self.const(f"{name}_w", w_q), self.const(f"{name}_w_scale", w_scale.astype(np.float32)),
            self.const(f"{name}_w_zp", np.zeros(C, np.int8))], f"{name}_wdq", axis=0)
        bias = self.const(f"{name}_b", self.rng.normal(0, 0.1, C).astype(np.float32))
        return self.qdq(self.node("Conv", [x, w_dq, bias], name, pads=[k // 2] * 4), 0.05)

    def model(self, c_in: int, out: list[str], out_size: int) -> onnx.ModelProto:
        """Input ``x`` [1, c_in, 8, 8]; outputs ``out`` [1, C, out_size, out_size]."""
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 8, 8])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, C, out_size, out_size])
             for o in out], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _residual_block(seed: int = 0) -> onnx.ModelProto:
    """x [1,C,8,8] -> ResNet-style block in ORT's QDQ format, Q/DQ pairs shared:

    x -Q/DQ-> conv_a(1x1) -Q/DQ-> Relu -Q/DQ-> conv_b(3x3) -Q/DQ-> Add(+ x's DQ)
      -> Relu -Q/DQ-> conv_c(1x1) -Q/DQ-> Add(+ the same DQ) -> y
    """
    g = _Graph(seed)
    x = g.qdq("x", 0.03)
    b = g.conv(g.qdq(g.node("Relu", [g.conv(x, "conv_a", 1)], "ra"), 0.03), "conv_b", 3)
    rs = g.node("Relu", [g.node("Add", [b, x], "sum")], "rs")
    g.node("Add", [g.conv(g.qdq(rs, 0.03), "conv_c", 1), x], "y")
    return g.model(C, ["y"], 8)


def _stem(seed: int = 0) -> onnx.ModelProto:
    """x [1,3,8,8] -Q/DQ-> conv -Q/DQ-> Relu -> MaxPool(3x3, s2) -Q/DQ-> conv_a and
    conv_b: the ResNet stem (and first downsample) as ORT's quantizer leaves it."""
    g = _Graph(seed)
    r = g.node("Relu", [g.conv(g.qdq("x", 0.03), "stem", 3, c_in=3)], "r")
    pool = g.node("MaxPool", [r], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    pooled = g.qdq(pool, 0.04)  # one pair shared by both convs, as ORT writes it
    g.conv(pooled, "conv_a", 1)
    g.conv(pooled, "conv_b", 1)
    return g.model(3, ["conv_a_dq", "conv_b_dq"], 4)


def _run_unoptimized(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """Reference semantics: every Q/DQ executed as written (no fusion)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_dedicated_pairs_let_ort_fuse_every_conv() -> None:
    model = _residual_block()
    # The shared layout: ORT keeps the convs that read the shared block input in FP32.
    assert "conv_a" in unfused_weight_ops(ort_optimized_graph(model)), \
        "this ONNX Runtime fuses shared Q/DQ pairs: dedicate_activation_qdq may be unnecessary"

    added = dedicate_activation_qdq(model)
    assert added == 2  # x feeds conv_a, add_1 and add_2: two more pairs
    onnx.checker.check_model(model)
    optimized = ort_optimized_graph(model)
    assert unfused_weight_ops(optimized) == []
    counts = op_counts(optimized)
    assert counts.get("QLinearConv") == 3 and "Conv" not in counts


def test_dedicated_pairs_keep_the_graph_meaning_and_tensorrt_format() -> None:
    x = np.random.default_rng(1).normal(0, 1, (1, C, 8, 8)).astype(np.float32)
    shared = _residual_block()
    reference = _run_unoptimized(shared, x)
    model = _residual_block()
    dedicate_activation_qdq(model)
    np.testing.assert_array_equal(_run_unoptimized(model, x)[0], reference[0])
    assert inspect_qdq(model).problems == []
    # Every activation Q has its own scale / zero-point initializers: that is what
    # stops ORT's common-subexpression elimination from merging the pairs again.
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len({n.input[1] for n in q_nodes}) == len(q_nodes)
    assert len({n.input[2] for n in q_nodes}) == len(q_nodes)
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    assert all(consumers[n.output[0]] == 1 for n in model.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear"))


def test_dedicating_twice_changes_nothing() -> None:
    model = _residual_block()
    dedicate_activation_qdq(model)
    before = model.SerializeToString()
    assert dedicate_activation_qdq(model) == 0
    assert model.SerializeToString() == before


def test_residual_add_runs_as_qlinear_add_with_identical_results() -> None:
    x = np.random.default_rng(2).normal(0, 1, (1, C, 8, 8)).astype(np.float32)
    reference = _run_unoptimized(_residual_block(), x)
    model = _residual_block()
    # add_1 -> relu_s -> Q qualifies; add_2 feeds the graph output (no Relu, no Q).
    assert quantize_add_before_relu(model) == 1
    dedicate_activation_qdq(model)
    onnx.checker.check_model(model)
    assert inspect_qdq(model).problems == []
    # Same scale as the Q after the Relu: Q(relu(x)) == max(Q(x), 0), bit for bit.
    np.testing.assert_array_equal(_run_unoptimized(model, x)[0], reference[0])
    optimized = ort_optimized_graph(model)
    counts = op_counts(optimized)
    assert counts.get("QLinearAdd") == 1 and counts.get("QLinearConv") == 3
    assert unfused_weight_ops(optimized) == []
    assert quantize_add_before_relu(model) == 0  # the Add now feeds a Q, not the Relu


def test_stem_maxpool_runs_on_int8_with_identical_results() -> None:
    x = np.random.default_rng(3).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    reference = _run_unoptimized(_stem(), x)
    model = _stem()
    assert apply_ort_fusion_layout(model) == {"add": 0, "dedicated": 1, "maxpool": 1}
    onnx.checker.check_model(model)
    assert inspect_qdq(model).problems == []
    for got, want in zip(_run_unoptimized(model, x), reference, strict=True):
        np.testing.assert_array_equal(got, want)  # max commutes with the quantizer
    optimized = ort_optimized_graph(model)
    assert unfused_weight_ops(optimized) == []
    producer = {out: n.op_type for n in optimized.graph.node for out in n.output}
    pools = [n for n in optimized.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 2  # one per quantized consumer
    # int8 MaxPool: ORT dropped its DQ/Q, it reads the Q of the Relu output directly
    assert all(producer.get(p.input[0]) == "QuantizeLinear" for p in pools)
