"""benchmarks.r50_speed and benchmarks.compute_floor on small inputs.

The real run is DETR-R50 at 800x1066 (minutes); here the same code runs on
DETR-tiny at 64x96 with one thread: the four paths in their own worker
processes, both INT8 formats, the ratios and the compute floor. Only structure
and consistency are checked: speed figures are printed by the benchmark, not
asserted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from benchmarks.compute_floor import compute_floor, count_macs, matmul_peak_gflops
from benchmarks.r50_speed import R50SpeedConfig, format_result, run_r50_speed


def _macs_model(path: Path) -> int:
    """Conv 3->4 3x3 on 8x8 (pad 1), reshape, MatMul [4,64]x[64,10], Gemm transB
    [4,10]x[6,10]^T; returns the multiply-adds counted by hand."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 3, 3, 3)), ("m", (64, 10)), ("g", (6, 10)))]
    inits.append(numpy_helper.from_array(np.array([4, 64], np.int64), "shape"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "m"], ["mm"]),
             helper.make_node("Gemm", ["mm", "g"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "macs", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [4, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return 4 * 8 * 8 * 27 + 4 * 10 * 64 + 4 * 6 * 10


def test_count_macs_by_hand(tmp_path: Path) -> None:
    expected = _macs_model(tmp_path / "m.onnx")
    assert count_macs(tmp_path / "m.onnx") == (expected, 4 * 8 * 8 * 27)


def test_compute_floor_is_macs_over_measured_peak(tmp_path: Path) -> None:
    _macs_model(tmp_path / "m.onnx")
    floor = compute_floor(tmp_path / "m.onnx", threads=1)
    assert floor.peak_gflops > 0
    assert floor.floor_ms == pytest.approx(2 * floor.macs / (floor.peak_gflops * 1e9) * 1e3)
    assert 0 < matmul_peak_gflops(1, n=256, runs=2)


def test_r50_speed_runs_every_path_in_its_own_worker(tmp_path: Path) -> None:
    config = R50SpeedConfig(preset="detr-tiny", height=64, width=96, runs=2, warmup=1,
                            threads=1, calib_images=2, work_dir=str(tmp_path), pause_s=0.0)
    result = run_r50_speed(config, log=lambda _: None)
    paths = result["paths"]
    assert list(paths) == ["pytorch_fp32", "ort_fp32", "ort_int8", "ort_int8_cpu"]
    for stats in paths.values():
        for kind in ("model", "e2e"):
            assert stats[kind]["runs"] == 2 and stats[kind]["median_ms"] > 0
    assert 0 < result["pre_ms"] < paths["ort_fp32"]["e2e"]["median_ms"]
    assert 0 < result["post_ms"] < paths["ort_fp32"]["e2e"]["median_ms"]
    ratios = result["ratios"]
    assert ratios["ort_int8_cpu_e2e / ort_fp32_e2e"] == pytest.approx(
        paths["ort_int8_cpu"]["e2e"]["median_ms"] / paths["ort_fp32"]["e2e"]["median_ms"])
    assert ratios["ort_fp32_e2e / pytorch_fp32_e2e"] == pytest.approx(
        paths["ort_fp32"]["e2e"]["median_ms"] / paths["pytorch_fp32"]["e2e"]["median_ms"])
    paired = result["paired_ratios"]["ort_int8_e2e / ort_fp32_e2e"]
    rounds = result["samples_ms"]
    per_round = [a / b for a, b in zip(rounds["ort_int8"]["e2e"], rounds["ort_fp32"]["e2e"])]
    assert paired == pytest.approx(float(np.median(per_round)))
    floor = result["compute_floor"]
    assert (floor["macs"], floor["conv_macs"]) == count_macs(tmp_path / "detr_tiny_fp32.onnx")
    text = format_result(result)
    assert "detr-tiny 64x96 batch 1, 1 CPU threads" in text
    assert "ort_int8_cpu_e2e / ort_fp32_e2e" in text and "FP32 compute:" in text
    for name in ("fp32", "int8", "int8_cpu"):
        assert (tmp_path / f"detr_tiny_{name}.onnx").is_file()
