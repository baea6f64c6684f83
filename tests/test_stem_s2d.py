"""export.int8.stem_space_to_depth: the space-to-depth stem is the same function as the 7x7
stride-2 conv it replaces (ONNX Runtime FP32, odd and even sizes, with bias),
and the cpu INT8 format uses it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from export.int8.stem_space_to_depth import s2d_weight, stem_to_space_to_depth


def _stem(h: int, w: int, k: int = 7, pad: int = 3, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, k, k)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    conv = helper.make_node("Conv", ["images", "w", "b"], ["c"], name="stem", strides=[2, 2],
                            pads=[pad] * 4, kernel_shape=[k, k])
    relu = helper.make_node("Relu", ["c"], ["y"], name="relu")
    graph = helper.make_graph([conv, relu], "stem", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, [1, 3, h, w])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.mark.parametrize(("h", "w", "k", "pad"), [(64, 96, 7, 3), (65, 67, 7, 3), (32, 33, 3, 1),
                                                  (40, 40, 4, 1)])
def test_rewrite_is_exact(h: int, w: int, k: int, pad: int) -> None:
    model = _stem(h, w, k, pad)
    x = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32)
    before = _run(model, x)
    assert stem_to_space_to_depth(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Pad", "SpaceToDepth", "Conv", "Relu"]
    conv = model.graph.node[2]
    assert conv.name == "stem"  # node lists (quantize, fallback) still find it
    assert not any(i.name == "w" for i in model.graph.initializer)  # old kernel dropped
    after = _run(model, x)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_weight_layout_follows_space_to_depth_channel_order() -> None:
    w = np.arange(2 * 3 * 7 * 7, dtype=np.float32).reshape(2, 3, 7, 7)
    s = s2d_weight(w)
    assert s.shape == (2, 12, 4, 4)
    # channel (p*2 + q)*C + c, tap (a, b) holds W[:, c, 2a + p, 2b + q]; u or v = 7 is zero.
    assert s[1, (1 * 2 + 0) * 3 + 2, 1, 3] == w[1, 2, 3, 6]
    assert s[0, (0 * 2 + 1) * 3 + 1, 2, 0] == w[0, 1, 4, 1]
    assert not s[:, 6:, 3, :].any()  # p = 1, a = 3 -> u = 7: outside the 7x7 kernel


def test_only_a_stride_two_conv_on_the_graph_input_is_rewritten() -> None:
    model = _stem(32, 32)
    strides = next(a for a in model.graph.node[0].attribute if a.name == "strides")
    strides.ints[:] = [1, 1]  # stride 1: not a stem to rewrite
    assert not stem_to_space_to_depth(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]


def test_cpu_int8_of_detr_tiny_has_the_s2d_stem(detr_tiny_int8: dict[str, Any]) -> None:
    ops = [n.op_type for n in detr_tiny_int8["cpu_model"].graph.node]
    assert "SpaceToDepth" in ops
    # The rewritten FP32 temp file (next to the output) is gone.
    assert not list(detr_tiny_int8["cpu"].parent.glob("*.s2d.onnx"))
    assert "SpaceToDepth" not in [n.op_type for n in detr_tiny_int8["tensorrt_model"].graph.node]
