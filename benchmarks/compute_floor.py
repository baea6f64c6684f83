"""A lower bound on FP32 inference time: the graph's multiply-adds over this
machine's measured FP32 matrix-multiply peak.

This shows whether a speed target can be reached at all with exact FP32
arithmetic. Every Conv, Gemm and MatMul of an FP32 ONNX graph is counted
(direct convolution, as ONNX Runtime's CPU provider computes it). The count is
divided by the best rate a large square ONNX Runtime MatMul reaches on the
same threads. No FP32 engine computing the same products can take less time,
except with a different algorithm (Winograd, FFT).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.timing import time_call


@dataclass(frozen=True)
class ComputeFloor:
    macs: int  # multiply-adds of Conv/Gemm/MatMul in the graph
    conv_macs: int  # ... of which in Conv
    peak_gflops: float  # measured FP32 MatMul peak, 1e9 FLOP/s (1 MAC = 2 FLOP)
    floor_ms: float  # 2 * macs / peak

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_macs(model_path: str | os.PathLike[str]) -> tuple[int, int]:
    """(all, conv) multiply-adds of Conv/Gemm/MatMul in a static-shape ONNX graph."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(model_path)))
    shapes: dict[str, list[int]] = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
        shapes[info.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = conv = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out, w = shapes.get(node.output[0]), shapes.get(node.input[1])
            if not out or not w or 0 in out:
                raise ValueError(f"{node.name}: unknown shape (graph needs static shapes)")
            macs = int(np.prod(out)) * int(np.prod(w[1:]))  # per output: C_in/group * kh * kw
            total += macs
            conv += macs
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not a or not out or 0 in out or 0 in a:
                raise ValueError(f"{node.name}: unknown shape (graph needs static shapes)")
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            k = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
            total += int(np.prod(out)) * int(k)
    return total, conv


def matmul_peak_gflops(threads: int, n: int = 2048, runs: int = 5) -> float:
    """Best FP32 rate of an n x n x n ONNX Runtime MatMul on ``threads`` threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((n, n), dtype=np.float32),
            "b": rng.standard_normal((n, n), dtype=np.float32)}
    best_ms = time_call(lambda: session.run(None, feed), runs=runs, warmup=1).min_ms
    return 2.0 * n ** 3 / (best_ms * 1e6)


def compute_floor(model_path: str | os.PathLike[str], threads: int) -> ComputeFloor:
    """Multiply-adds of ``model_path`` and the FP32 time they need at the measured peak."""
    macs, conv = count_macs(model_path)
    peak = matmul_peak_gflops(threads)
    return ComputeFloor(macs=macs, conv_macs=conv, peak_gflops=peak,
                        floor_ms=2.0 * macs / (peak * 1e9) * 1e3)
