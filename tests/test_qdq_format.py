"""``quantize --target cpu``: ONNX Runtime's uint8 Q/DQ format.

Checked on the real DETR-tiny graph (ResNet-18 body, random init, 64 px): the
format (uint8 activations, symmetric per-channel int8 weights, heads in FP32),
that ONNX Runtime runs the whole ResNet body in the integer domain (every
ReLU folded away, residual Adds as QLinearAdd), that the outputs stay close to
FP32, and that the TensorRT paths refuse it with a clear message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tiny_detr_like import export_tiny_detr_like

from export.int8.calib_data import iter_feeds, list_images
from export.int8.config import QuantizeConfig
from export.int8.nodes import ensure_node_names, head_nodes
from export.int8.ort_fusion_layout import op_counts, ort_optimized_graph, unfused_weight_ops
from export.int8.qdq_check import inspect_qdq
from export.int8.qdq_insert import conv_stage_nodes
from export.onnx_meta import read_meta
from runtime.errors import InputError, ModelFormatError


@pytest.fixture(scope="module")
def cpu_int8(detr_tiny_int8: dict[str, object]) -> dict[str, object]:
    """The cpu-format INT8 DETR-tiny of the shared fixture, by the names used here."""
    return {"fp32": detr_tiny_int8["fp32"], "images": detr_tiny_int8["images"],
            "out": detr_tiny_int8["cpu"], "model": detr_tiny_int8["cpu_model"],
            "report": detr_tiny_int8["cpu_report"]}


def _const(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def test_cpu_format_uint8_activations_int8_per_channel_weights(cpu_int8: dict) -> None:
    model = cpu_int8["model"]
    info = inspect_qdq(model, "cpu")
    assert info.problems == []
    weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
               and any(i.name == n.input[0] for i in model.graph.initializer)}
    activation_zps = [_const(model, n.input[2]) for n in model.graph.node
                      if n.op_type == "QuantizeLinear"]
    assert activation_zps and all(z.dtype == np.uint8 for z in activation_zps)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            assert _const(model, node.input[2]).dtype == np.int8
            assert not _const(model, node.input[2]).any()
    heads = head_nodes(ensure_node_names(onnx.load(str(cpu_int8["fp32"]))))
    assert not info.quantized & heads
    # ...and it is NOT TensorRT's format: the TensorRT check names the zero points.
    assert any("is not int8 0" in p for p in inspect_qdq(model).problems)


def test_ort_runs_the_resnet_body_in_the_integer_domain(cpu_int8: dict) -> None:
    """Every Conv/Gemm is an integer kernel, the 8 residual Adds are QLinearAdd and
    no ReLU of the ResNet body is left as float work (folded into zero points)."""
    optimized = ort_optimized_graph(cpu_int8["model"])
    assert unfused_weight_ops(optimized) == []
    counts = op_counts(optimized)
    assert counts.get("QLinearConv") == 21 and counts.get("QLinearAdd") == 8, counts
    body_relus = [n.name for n in optimized.graph.node
                  if n.op_type == "Relu" and n.name.startswith("/body/")]
    assert body_relus == []
    fp32_relus = [n for n in onnx.load(str(cpu_int8["fp32"])).graph.node if n.op_type == "Relu"]
    assert counts.get("Relu", 0) < len(fp32_relus) - 16  # the 17 body ReLUs are gone


def test_cpu_format_output_close_to_fp32(cpu_int8: dict) -> None:
    meta = read_meta(onnx.load(str(cpu_int8["fp32"])), cpu_int8["fp32"])
    fp32 = ort.InferenceSession(str(cpu_int8["fp32"]), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(cpu_int8["out"]), providers=["CPUExecutionProvider"])
    for feed in iter_feeds(list_images(cpu_int8["images"])[:4], meta, 1):  # graph: batch 1
        (l32, b32), (l8, b8) = fp32.run(None, feed), int8.run(None, feed)
        assert np.abs(b8 - b32).max() < 0.02  # boxes: sigmoid cxcywh in [0, 1]
        assert np.abs(l8 - l32).mean() < 0.1 * np.abs(l32).mean() + 1e-3
        assert not np.array_equal(l8, l32)  # it did run quantized


def test_metadata_and_report_name_the_target(cpu_int8: dict) -> None:
    from benchmarks.artifacts import row_precision

    meta = read_meta(onnx.load(str(cpu_int8["out"])), cpu_int8["out"])
    assert meta.precision == "int8" and meta.extra["int8"]["target"] == "cpu"
    assert row_precision(meta) == "int8-cpu"
    report = cpu_int8["report"]
    assert report.target == "cpu" and "(cpu Q/DQ format)" in report.format()
    assert report.check_onnx == [("SKIP check-onnx: the cpu format (uint8 activations) is "
                                  "for ONNX Runtime, not TensorRT")]


def test_engine_builder_refuses_the_cpu_format(cpu_int8: dict, tmp_path: Path) -> None:
    """Refused before TensorRT is touched, so the message is the same with or without it."""
    from export.engine_builder import EngineBuildConfig, build_engine

    with pytest.raises(ModelFormatError, match="cpu Q/DQ format.*--target tensorrt"):
        build_engine(EngineBuildConfig(onnx_path=str(cpu_int8["out"]),
                                       out_path=str(tmp_path / "m.engine")))
    assert not (tmp_path / "m.engine").exists()


def test_check_onnx_fails_the_cpu_format_and_says_why(cpu_int8: dict) -> None:
    from export.check_onnx import CheckConfig, check_onnx

    report = check_onnx(cpu_int8["out"], CheckConfig(overflow_scan=False))
    qdq = next(r for r in report.results if r.name == "Q/DQ symmetric")
    assert qdq.status == "FAIL" and not report.ok
    assert qdq.detail.startswith("quantized with --target cpu") and "needs int8" in qdq.detail


def test_conv_stage_is_the_resnet_body_only(tmp_path: Path,
                                            detr_tiny_int8: dict[str, object]) -> None:
    """ReLU/Add/MaxPool fed by quantized convs are quantized; transformer ReLUs and
    residual Adds (next to float LayerNorm/attention) are not."""
    small = ensure_node_names(onnx.load(str(export_tiny_detr_like(tmp_path / "t.onnx"))))
    convs = {n.name for n in small.graph.node if n.op_type == "Conv"}
    assert conv_stage_nodes(small, convs) == ["/layer1/layer1.1/Relu", "/layer2/layer2.1/Relu"]
    # A conv left in FP32 (fallback) takes its ReLU with it.
    assert conv_stage_nodes(small, {c for c in convs if "layer2" not in c}) == [
        "/layer1/layer1.1/Relu"]
    real = ensure_node_names(onnx.load(str(detr_tiny_int8["fp32"])))
    stage = conv_stage_nodes(real, {n.name for n in real.graph.node if n.op_type == "Conv"})
    kinds = [next(n.op_type for n in real.graph.node if n.name == s) for s in stage]
    assert (kinds.count("Relu"), kinds.count("Add"), kinds.count("MaxPool")) == (17, 8, 1)
    assert all(s.startswith("/body/") for s in stage)


def test_unknown_target_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown target 'gpu'"):
        QuantizeConfig(target="gpu").validate()


def test_cli_quantize_target_cpu(cpu_int8: dict, tmp_path: Path) -> None:
    import subprocess
    import sys

    from cli_checks import ROOT

    out = tmp_path / "cli.int8_cpu.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "quantize", "--onnx", str(cpu_int8["fp32"]),
         "--calib-data", str(cpu_int8["images"]), "--out", str(out), "--target", "cpu",
         "--calib-images", "4", "--eval-images", "0", "--latency-runs", "0"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(cpu Q/DQ format)" in proc.stdout and "WARNING" not in proc.stderr
    assert read_meta(onnx.load(str(out)), out).extra["int8"]["target"] == "cpu"


def test_ort_keeps_the_resnet_body_in_nhwc_end_to_end(cpu_int8: dict, tmp_path: Path) -> None:
    """With every optimisation (level ALL: the NHWC transformer), ORT runs the body
    as one NHWC chain: no Transpose between two integer body kernels; the layout
    changes only once before the stem conv and once after the input projection."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(cpu_int8["out"]), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    producer = {o: n for n in graph.node for o in n.output}
    body = ("QLinearConv", "QLinearAdd", "NhwcMaxPool")
    fed_by_transpose = [n.name for n in graph.node if n.op_type in body
                        and getattr(producer.get(n.input[0]), "op_type", "") == "Transpose"]
    assert len(fed_by_transpose) == 1 and fed_by_transpose[0].startswith("/body/conv1/"), \
        fed_by_transpose  # only the stem conv
    between = [n.name for n in graph.node if n.op_type == "Transpose"
               and getattr(producer.get(n.input[0]), "op_type", "") in body
               and not getattr(producer.get(n.input[0]), "name", "").startswith("/input_proj")]
    assert between == []
