"""A tiny hand-built ONNX graph with the detr-edge I/O contract, for runtime tests.

Not a DETR: features are the per-channel image means (plus the padding fraction
when the graph has a mask input) through one linear layer. With the default
tiny weights the outputs are (almost) the biases, so tests know exactly which
boxes and classes come out: slot q predicts class ``q % K`` with a confident
logit for q < num_objects, no-object otherwise, and box ``BOXES[q % 4]``
(normalised cxcywh).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.metadata import METADATA_KEY, ModelMeta

BOXES = np.array([[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0],
                  [0.75, 0.5, 0.5, 0.2], [0.5, 0.75, 0.2, 0.5]])


def tiny_meta(h: int = 64, w: int = 64, batch_size: int | None = None,
              with_mask: bool = False, **kw: object) -> ModelMeta:
    return ModelMeta(preset="tiny-test", input_height=h, input_width=w,
                     class_names=["circle", "square", "triangle"], label_map=[3, 7, 11],
                     batch_size=batch_size, with_mask=with_mask, **kw)  # type: ignore[arg-type]


def make_tiny_onnx(path: Path, meta: ModelMeta, num_queries: int = 6, num_objects: int = 3,
                   weight_scale: float = 1e-3, seed: int = 0) -> Path:
    """Write the tiny model with ``meta`` in metadata_props; return ``path``."""
    rng = np.random.default_rng(seed)
    Q, K = num_queries, meta.num_classes  # queries, real classes
    F = 4 if meta.with_mask else 3  # feature size
    batch = meta.batch_size if meta.batch_size is not None else "batch"
    H, W = meta.input_height, meta.input_width
    bias_logits = np.full((Q, K + 1), -4.0)
    bias_logits[:, K] = 4.0  # no-object
    for q in range(num_objects):
        bias_logits[q, q % K] = 6.0 - 0.5 * q  # decreasing confidence
        bias_logits[q, K] = -4.0
    box_logit = np.log(BOXES / (1 - BOXES + 1e-9) + 1e-9)  # inverse sigmoid
    bias_boxes = np.stack([box_logit[q % 4] for q in range(Q)])
    inits = [
        numpy_helper.from_array((rng.standard_normal((F, Q * (K + 1))) * weight_scale)
                                .astype(np.float32), "w_cls"),
        numpy_helper.from_array(bias_logits.reshape(-1).astype(np.float32), "b_cls"),
        numpy_helper.from_array((rng.standard_normal((F, Q * 4)) * weight_scale)
                                .astype(np.float32), "w_box"),
        numpy_helper.from_array(bias_boxes.reshape(-1).astype(np.float32), "b_box"),
        numpy_helper.from_array(np.array([-1, Q, K + 1], dtype=np.int64), "shape_cls"),
        numpy_helper.from_array(np.array([-1, Q, 4], dtype=np.int64), "shape_box"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["feat3"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, H, W])]
    if meta.with_mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [batch, H, W]))
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
        nodes += [
            helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "axis1"], ["mask_4d"]),
            helper.make_node("GlobalAveragePool", ["mask_4d"], ["mask_pool"]),
            helper.make_node("Flatten", ["mask_pool"], ["mask_feat"], axis=1),
            helper.make_node("Concat", ["feat3", "mask_feat"], ["feat"], axis=1),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["feat3"], ["feat"]))
    nodes += [
        helper.make_node("MatMul", ["feat", "w_cls"], ["cls_mm"]),
        helper.make_node("Add", ["cls_mm", "b_cls"], ["cls_flat"]),
        helper.make_node("Reshape", ["cls_flat", "shape_cls"], ["logits"]),
        helper.make_node("MatMul", ["feat", "w_box"], ["box_mm"]),
        helper.make_node("Add", ["box_mm", "b_box"], ["box_pre"]),
        helper.make_node("Sigmoid", ["box_pre"], ["box_flat"]),
        helper.make_node("Reshape", ["box_flat", "shape_box"], ["boxes"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, Q, K + 1]),
               helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, Q, 4])]
    graph = helper.make_graph(nodes, "tiny_detr_contract", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
