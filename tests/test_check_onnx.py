"""check-onnx: passes a clean exported graph, fails graphs with planted problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxslim
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.check_onnx import FAIL, INFO, PASS, CheckConfig, check_onnx
from export.trt_ops import supported_ops
from runtime.cli import main as cli_main
from runtime.errors import ModelFormatError


class _Small(torch.nn.Module):
    """Conv + LayerNorm + Softmax head: the op mix of DETR at a tiny size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv(images).flatten(2).transpose(1, 2)  # [B, hw, 8]
        return self.norm(x).softmax(-1)


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("good") / "good.onnx"
    torch.manual_seed(0)
    torch.onnx.export(_Small().eval(), (torch.randn(1, 3, 16, 16),), str(path),
                      input_names=["images"], output_names=["out"], opset_version=17,
                      dynamo=False, dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}})
    # The TorchScript exporter leaves the flattened output dims symbolic; onnxslim's
    # shape inference makes them static, as export-onnx does.
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
    return str(path)


def _save(tmp_path, nodes, inputs, outputs, inits=(), name="m.onnx", opset=17) -> str:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path)


def _status(report, name: str) -> str:
    return next(r.status for r in report.results if r.name == name)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_good_graph_passes(good_onnx: str) -> None:
    report = check_onnx(good_onnx, CheckConfig(trt_version=10))
    assert report.ok, report.format()
    assert _status(report, "supported ops") == PASS
    assert _status(report, "static shapes") == PASS
    assert _status(report, "FP16 overflow") == PASS
    assert _status(report, "INT64 tensors") == INFO
    assert "PASS" in report.format() and "onnx-tensorrt" in report.format()
    assert check_onnx(good_onnx, CheckConfig(trt_version=11, overflow_scan=False)).ok


def test_cumsum_fails(tmp_path) -> None:
    axis = numpy_helper.from_array(np.array(1, dtype=np.int64), "axis")
    path = _save(tmp_path, [helper.make_node("CumSum", ["x", "axis"], ["y"])],
                 [_vi("x", [1, 4])], [_vi("y", [1, 4])], [axis])
    report = check_onnx(path)
    assert not report.ok
    assert _status(report, "no CumSum") == FAIL
    assert "onnx-tensorrt#1034" in report.format()


def test_unsupported_op_fails(tmp_path) -> None:
    path = _save(tmp_path, [helper.make_node("Det", ["x"], ["y"])],
                 [_vi("x", [2, 3, 3])], [_vi("y", [2])])
    report = check_onnx(path, CheckConfig(overflow_scan=False))
    assert _status(report, "supported ops") == FAIL
    assert "Det x1" in report.format()
    assert "Det" not in supported_ops(10) and "LayerNormalization" in supported_ops(11)


@pytest.mark.parametrize("zero_point,problem", [
    (np.array(3, dtype=np.int8), "nonzero zero point"),
    (np.array(0, dtype=np.uint8), "needs int8"),
])
def test_asymmetric_qdq_fails(tmp_path, zero_point, problem) -> None:
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")
    zp = numpy_helper.from_array(zero_point, "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q0"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq0")]
    path = _save(tmp_path, nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])], [scale, zp])
    report = check_onnx(path)
    assert _status(report, "Q/DQ symmetric") == FAIL
    assert problem in report.format()

    symmetric = numpy_helper.from_array(np.array(0, dtype=np.int8), "zp")
    good = _save(tmp_path, nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])], [scale, symmetric],
                 name="sym.onnx")
    assert _status(check_onnx(good), "Q/DQ symmetric") == PASS


def test_dynamic_non_batch_dim_fails(tmp_path) -> None:
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])],
                 [_vi("x", ["batch", "height", 4])], [_vi("y", ["batch", "height", 4])])
    report = check_onnx(path, CheckConfig(overflow_scan=False))
    assert _status(report, "static shapes") == FAIL
    assert "x dim 1 is 'height'" in report.format()


def test_data_dependent_pad_fails(tmp_path) -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Concat", ["s", "s"], ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["y"], name="pad0")]
    path = _save(tmp_path, nodes, [_vi("x", [1, 2])], [_vi("y", [3, 6])])
    report = check_onnx(path)
    assert _status(report, "constant Pad") == FAIL
    assert "pad0" in report.format()


def test_fp16_overflow_fails(tmp_path) -> None:
    # |x| ~ 3 -> x*1000 ~ 3e3 (fits FP16) -> *100 ~ 3e5 > 65504 = inf in FP16.
    a = numpy_helper.from_array(np.array(1000, dtype=np.float16), "a")
    b = numpy_helper.from_array(np.array(100, dtype=np.float16), "b")
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Mul", ["h", "a"], ["m1"], name="scale1"),
             helper.make_node("Mul", ["m1", "b"], ["m2"], name="scale2"),
             helper.make_node("Cast", ["m2"], ["y"], to=TensorProto.FLOAT)]
    path = _save(tmp_path, nodes, [_vi("x", [1, 64])], [_vi("y", [1, 64])], [a, b])
    report = check_onnx(path)
    assert _status(report, "FP16 overflow") == FAIL
    assert "scale2" in report.format() and "scale1," not in report.format()


def test_inf_attention_mask_is_not_overflow(tmp_path) -> None:
    """Where(mask, -inf, 0) + scores -> Softmax: the -inf comes from a constant."""
    neg_inf = numpy_helper.from_array(np.array(-np.inf, dtype=np.float32), "neg_inf")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [helper.make_node("Where", ["mask", "neg_inf", "zero"], ["bias"]),
             helper.make_node("Add", ["x", "bias"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["y"], axis=-1)]
    mask_vi = helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 8])
    path = _save(tmp_path, nodes, [_vi("x", [1, 8]), mask_vi], [_vi("y", [1, 8])],
                 [neg_inf, zero])
    feeds = {"x": np.zeros((1, 8), np.float32), "mask": np.arange(8)[None] > 5}
    from export.check_onnx import check_overflow

    result = check_overflow(onnx.load(path), [feeds], "test")
    assert result.status == PASS and "attention masks" in result.detail


def test_fp32_hot_activation_is_info(tmp_path) -> None:
    big = numpy_helper.from_array(np.array(1e6, dtype=np.float32), "big")
    path = _save(tmp_path, [helper.make_node("Mul", ["x", "big"], ["y"])],
                 [_vi("x", [1, 64])], [_vi("y", [1, 64])], [big])
    report = check_onnx(path)
    assert _status(report, "FP16 overflow") == INFO
    assert report.ok


def test_truncated_file_is_model_format_error(good_onnx: str, tmp_path, capsys) -> None:
    data = Path(good_onnx).read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFormatError, match="truncated|not a readable ONNX"):
        check_onnx(bad)
    text = tmp_path / "text.onnx"
    text.write_text("this is not onnx")
    with pytest.raises(ModelFormatError, match="truncated|not a readable ONNX"):
        check_onnx(text)
    assert cli_main(["check-onnx", str(bad)]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_exit_codes(good_onnx: str, tmp_path, capsys) -> None:
    assert cli_main(["check-onnx", good_onnx]) == 0
    assert "=> TensorRT should build" in capsys.readouterr().out
    axis = numpy_helper.from_array(np.array(1, dtype=np.int64), "axis")
    path = _save(tmp_path, [helper.make_node("CumSum", ["x", "axis"], ["y"])],
                 [_vi("x", [1, 4])], [_vi("y", [1, 4])], [axis])
    assert cli_main(["check-onnx", path, "--trt-version", "11"]) == 1
    assert "FAIL  no CumSum" in capsys.readouterr().out
