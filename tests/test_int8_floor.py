"""The backbone floor (benchmarks/int8_floor.py) on the real DETR-tiny graph and a
fully INT8 copy of it: where the backbone is cut, that the cut-out backbone computes
exactly the full model's tensor, what is timed, and the pipeline line's verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tiny_detr_like import export_detr_tiny, write_images

from benchmarks.int8_floor import FloorSpread, backbone_cut, backbone_model, floor_spread
from benchmarks.int8_frontier import floor_line
from export.int8.config import QuantizeConfig
from export.int8.quantize import quantize_int8
from runtime.errors import InputError


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("floor")
    fp32 = export_detr_tiny(root / "fp32.onnx")
    images = write_images(root / "images", 8)
    quantize_int8(fp32, str(images), QuantizeConfig(
        out_path=str(root / "int8.onnx"), calib_images=8, eval_images=0, threads=1,
        progress=False, cache_dir=str(root / "cache")))
    return {"fp32": fp32, "int8": root / "int8.onnx", "images": images}


def _run(model: object, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    # Unoptimized: the ONNX semantics of the same nodes (ORT fuses Q/DQ differently
    # when the cut tensor is a graph output, which moves values by a few INT8 steps).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(outputs, feed)


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_backbone_is_cut_at_input_proj_and_computes_the_same_tensor(
        models: dict[str, Path], name: str) -> None:
    full = onnx.load(str(models[name]))
    cut = backbone_cut(full)
    made_by = {o: n for n in full.graph.node for o in n.output}[cut]
    # FP32: input_proj's Conv itself; INT8: the DQ of the Q/DQ pair after it.
    assert made_by.op_type == ("Conv" if name == "fp32" else "DequantizeLinear")
    assert "input_proj" in cut
    sub, int8_convs, convs = backbone_model(full)
    assert convs == 21  # ResNet-18 body (20) + input_proj
    assert int8_convs == (0 if name == "fp32" else convs)
    assert [i.name for i in sub.graph.input] == ["images"]
    # The cut-out backbone is the full graph's subgraph: the same tensor, bit for bit.
    images = np.random.default_rng(0).random((1, 3, 64, 64), np.float32)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(full)
    exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(cut))
    (want,) = _run(exposed, {"images": images}, [cut])
    (got,) = _run(sub, {"images": images}, [cut])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_generic_names_cut_at_the_last_conv(models: dict[str, Path], name: str) -> None:
    full = onnx.load(str(models[name]))
    want = backbone_cut(full).replace("input_proj", "proj")
    # As an exporter with generic names: no node or tensor says "input_proj".
    for i, node in enumerate(full.graph.node):
        node.name = f"node_{node.op_type}_{i}"
        node.input[:] = [t.replace("input_proj", "proj") for t in node.input]
        node.output[:] = [t.replace("input_proj", "proj") for t in node.output]
    for init in full.graph.initializer:
        init.name = init.name.replace("input_proj", "proj")
    assert backbone_cut(full) == want
    for node in full.graph.node:
        if node.op_type == "Conv":
            node.op_type = "ConvInteger"
    with pytest.raises(InputError, match="among 0 Conv nodes"):
        backbone_cut(full)


def test_floor_spread_times_every_repeat(models: dict[str, Path]) -> None:
    images = np.random.default_rng(0).random((1, 3, 64, 64), np.float32)
    same, int8 = floor_spread(models["fp32"], [models["fp32"], models["int8"]],
                              {"images": images}, repeats=2, runs=4, threads=1)
    for spread in (same, int8):
        assert len(spread.ratios) == len(spread.floors) == len(spread.backbone_ratios) == 2
        assert 0 < spread.rest_ms < spread.fp32_ms
    # FP32 against itself: every figure is ~1 (timing noise only).
    assert all(0.5 < r < 2 for r in same.ratios + same.floors + same.backbone_ratios)
    assert (same.int8_convs, int8.int8_convs, int8.convs) == (0, 21, 21)
    assert "21/21 convs INT8" in int8.line() and "(2 repeats)" in int8.line()


def test_line_says_when_the_target_is_below_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    def spread(floors: tuple[float, ...]) -> FloorSpread:
        return FloorSpread("m.onnx", (0.66, 0.64), floors, (0.56, 0.57), 15.0, 2.0, 21, 21)

    assert "out of reach" in floor_line(spread((0.63, 0.64)), 0.6)
    assert "out of reach" not in floor_line(spread((0.59, 0.64)), 0.6)  # one repeat reached it
    assert "0.65x (0.64-0.66) FP32; backbone floor 0.64x (0.63-0.64)" in floor_line(spread((0.63, 0.64)), 0.7)
    for has_dot_product in (True, False):
        monkeypatch.setattr("benchmarks.int8_frontier.int8_dot_product_safe",
                            lambda has=has_dot_product: has)
        line = floor_line(spread((0.63, 0.64)), 0.6)
        assert ("no int8 dot-product instruction" in line) is not has_dot_product


def test_int8_latency_prints_the_floor(models: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.int8_latency import main

    assert main(["--fp32", str(models["fp32"]), "--int8", str(models["int8"]),
                 "--images", str(models["images"]), "--repeats", "1", "--runs", "2",
                 "--threads", "1", "--floor"]) == 0
    out = capsys.readouterr().out
    assert "int8.onnx: " in out and "backbone floor" in out and "21/21 convs INT8" in out
