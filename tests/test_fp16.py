"""FP16 ONNX: float32 interface kept, runs on ONNX Runtime CPU, close to FP32,
sensitive nodes (LayerNormalization, Softmax, output heads, hot activations) in FP32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from detr import build_model
from export.fp16 import FP16Config, convert_to_fp16
from export.onnx_export import ExportConfig, export_detr
from export.onnx_meta import read_meta
from runtime.metadata import ModelMeta

# FP16 tolerances vs FP32 on random weights (logits are O(1), boxes in [0, 1]).
LOGITS_TOL = 0.05
BOXES_TOL = 0.01


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("detr-tiny", 3).eval()
    meta = ModelMeta(preset="detr-tiny", input_height=1, input_width=1,
                     class_names=["a", "b", "c"], label_map=[1, 2, 3])
    out = tmp_path_factory.mktemp("fp16") / "tiny.fp16.onnx"
    config = ExportConfig(checkpoint="-", out=str(out), height=64, width=96,
                          dynamic_batch=True, precision="fp16")
    return model, config, export_detr(model, meta, config)


def test_fp16_model_runs_and_is_close(fp16_export) -> None:
    model, config, result = fp16_export
    graph = onnx.load(config.out)
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [TensorProto.FLOAT]
    assert {o.type.tensor_type.elem_type for o in graph.graph.output} == {TensorProto.FLOAT}
    assert any(i.data_type == TensorProto.FLOAT16 for i in graph.graph.initializer)
    assert read_meta(graph).precision == "fp16"
    assert result.fp32_parity is not None and result.fp32_parity.passed
    images = np.random.default_rng(3).standard_normal((3, 3, 64, 96), dtype=np.float32)
    session = ort.InferenceSession(config.out, providers=["CPUExecutionProvider"])
    logits, boxes = session.run(["logits", "boxes"], {"images": images})
    with torch.no_grad():
        ref = model(torch.from_numpy(images))
    assert np.abs(logits - ref["pred_logits"].numpy()).max() <= LOGITS_TOL
    assert np.abs(boxes - ref["pred_boxes"].numpy()).max() <= BOXES_TOL
    for case in result.parity.cases:
        assert case.max_abs["logits"] <= LOGITS_TOL and case.max_abs["boxes"] <= BOXES_TOL


def test_sensitive_nodes_listed_and_fp32(fp16_export) -> None:
    _, config, result = fp16_export
    kept = {k.op_type for k in result.fp16.kept}
    assert {"LayerNormalization", "Softmax", "Sigmoid"} <= kept
    assert any("output head" in k.reason for k in result.fp16.kept)
    assert result.fp16.num_fp16_nodes > result.fp16.num_fp32_nodes > 0
    graph = onnx.shape_inference.infer_shapes(onnx.load(config.out))
    types = {v.name: v.type.tensor_type.elem_type for v in graph.graph.value_info}
    for node in graph.graph.node:
        if node.op_type == "LayerNormalization":
            assert types.get(node.output[0]) == TensorProto.FLOAT
        if node.op_type == "Conv":
            assert types.get(node.output[0]) == TensorProto.FLOAT16
    assert "LayerNormalization" in result.fp16.format()


def _hot_graph() -> onnx.ModelProto:
    """x -> Mul(1000) -> Mul(100) -> Relu -> Mul(1e-5) -> y: the second product
    reaches ~1e5 |x| > 65504, so that node must stay FP32."""
    inits = [numpy_helper.from_array(np.array(v, dtype=np.float32), n)
             for n, v in (("a", 1000.0), ("b", 100.0), ("c", 1e-5))]
    nodes = [helper.make_node("Mul", ["x", "a"], ["t1"], name="scale1"),
             helper.make_node("Mul", ["t1", "b"], ["t2"], name="scale2"),
             helper.make_node("Relu", ["t2"], ["t3"], name="relu"),
             helper.make_node("Mul", ["t3", "c"], ["y"], name="shrink")]
    graph = helper.make_graph(nodes, "hot", [helper.make_tensor_value_info("x", 1, [1, 16])],
                              [helper.make_tensor_value_info("y", 1, [1, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hot_activation_kept_fp32() -> None:
    model = _hot_graph()
    feeds = [{"x": np.linspace(-2, 2, 16, dtype=np.float32)[None]}]
    fp16, report = convert_to_fp16(model, feeds, FP16Config(keep_output_heads=False))
    kept = {k.name: k.reason for k in report.kept}
    assert "scale2" in kept and "data_max" in kept["scale2"]
    assert "relu" in kept  # its input t2 is hot too
    assert "scale1" not in kept  # 2000 fits FP16
    out = ort.InferenceSession(fp16.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    expected = np.maximum(feeds[0]["x"] * 1e5, 0) * 1e-5
    assert np.isfinite(out).all() and np.abs(out - expected).max() < 1e-2
    # Without the range rule the 2e5 product would be an FP16 tensor (inf on a GPU;
    # ORT CPU may compute Mul through inserted FP32 casts, so check the types).
    naive, naive_report = convert_to_fp16(model, feeds, FP16Config(keep_output_heads=False,
                                                                   data_max=float("inf")))
    assert naive_report.kept == []
    inferred = onnx.shape_inference.infer_shapes(naive)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types["t2"] == TensorProto.FLOAT16
    fp16_types = {v.name: v.type.tensor_type.elem_type
                  for v in onnx.shape_inference.infer_shapes(fp16).graph.value_info}
    assert fp16_types["t2"] == TensorProto.FLOAT


def test_fp16_mask_graph_dynamic_batch(tmp_path) -> None:
    """Mask graph: -inf attention-mask constants are not 'overflow' (so attention
    stays FP16) and ONNX Runtime runs the dynamic-batch FP16 graph at batch 3."""
    torch.manual_seed(1)
    model = build_model("detr-tiny", 2).eval()
    meta = ModelMeta(preset="detr-tiny", input_height=1, input_width=1,
                     class_names=["a", "b"], label_map=[3, 9])
    config = ExportConfig(checkpoint="-", out=str(tmp_path / "m16.onnx"), height=64, width=64,
                          dynamic_batch=True, with_mask=True, precision="fp16")
    result = export_detr(model, meta, config)
    assert result.fp16 is not None
    assert not any("inf" in k.reason and "data_max" in k.reason for k in result.fp16.kept)
    images = np.random.default_rng(4).standard_normal((3, 3, 64, 64), dtype=np.float32)
    mask = np.zeros((3, 64, 64), dtype=bool)
    mask[0, :, 32:] = True
    mask[2, 40:, :] = True
    images[mask[:, None].repeat(3, axis=1)] = 0.0
    session = ort.InferenceSession(config.out, providers=["CPUExecutionProvider"])
    logits, boxes = session.run(["logits", "boxes"], {"images": images, "mask": mask})
    with torch.no_grad():
        ref = model(torch.from_numpy(images), torch.from_numpy(mask))
    assert np.abs(logits - ref["pred_logits"].numpy()).max() <= LOGITS_TOL
    assert np.abs(boxes - ref["pred_boxes"].numpy()).max() <= BOXES_TOL
