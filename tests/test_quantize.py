"""INT8 Q/DQ quantization: TensorRT-format structure, heads kept FP32, accuracy
against FP32, deterministic calibration, sensitivity ranking and FP32 fallback.

The models are small DETR-shaped networks on synthetic 64 px images
(tests/tiny_detr_like.py). The "outlier" variant gives encoder layer 0 one
output channel ~1000x the others, which per-tensor INT8 activations of encoder
layer 1 cannot represent: the sensitivity analysis must find that block and the
search must fall back exactly it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")

from tiny_detr_like import export_tiny_detr_like, write_images

from export.int8.calib_data import iter_feeds, list_images, select_images, split_images
from export.int8.config import QuantizeConfig
from export.int8.nodes import block_of, head_nodes, quantizable_nodes
from export.int8.objective import Candidate
from export.int8.ort_fusion_layout import op_counts, ort_optimized_graph, unfused_weight_ops
from export.int8.paired_bootstrap import PairedDifference
from export.int8.qdq_check import inspect_qdq, scales
from export.int8.quantize import quantize_int8, report_path
from export.int8.search import beyond_noise, pick_step
from export.int8.sensitivity import output_error
from export.onnx_meta import read_meta
from runtime.errors import InputError


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quant")
    return {"tiny": export_tiny_detr_like(root / "tiny.onnx"),
            "outlier": export_tiny_detr_like(root / "outlier.onnx", True),
            "images": write_images(root / "images"), "root": root,
            "many": write_images(root / "many", 96)}  # 48 held out: steps beyond noise


def _config(tmp: Path, **overrides: object) -> QuantizeConfig:
    base: dict[str, object] = {"calib_images": 16, "eval_images": 8, "latency_runs": 3,
                               "speed_fallback": False,  # by timing: test_speed_fallback.py
                               "warmup_runs": 1, "threads": 1, "progress": False,
                               "cache_dir": str(tmp / "cache")}
    base.update(overrides)
    return QuantizeConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def quantized(data: dict[str, Path]) -> tuple[onnx.ModelProto, object, Path]:
    out = data["root"] / "tiny.int8.onnx"
    model, report = quantize_int8(data["tiny"], str(data["images"]),
                                  _config(data["root"], out_path=str(out)))
    return model, report, out


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    return None


def test_qdq_is_symmetric_int8_with_per_channel_weights(quantized: tuple) -> None:
    model, _, _ = quantized
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero = _const(model, node.input[2])
        assert zero is not None and zero.dtype == np.int8 and not zero.any(), node.name
        assert np.all(_const(model, node.input[1]) > 0)
    producers = {o: n for n in model.graph.node for o in n.output}
    seen = {"Conv": 0, "MatMul": 0}
    for node in model.graph.node:
        dq = producers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in seen or dq is None or dq.op_type != "DequantizeLinear":
            continue
        weight = _const(model, dq.input[0])
        if weight is None:
            continue  # an activation input, not a weight
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        scale = _const(model, dq.input[1])
        assert weight.dtype == np.int8
        # Conv weights [C_out, C_in, kh, kw] -> axis 0; MatMul weights [K, N] -> axis 1.
        expected = 0 if node.op_type == "Conv" else 1
        assert axis == expected and scale.shape == (weight.shape[expected],), node.name
        seen[node.op_type] += 1
    assert seen["Conv"] == 3 and seen["MatMul"] >= 2
    # Activations are per-tensor: every Q node has a scalar scale.
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert _const(model, node.input[1]).size == 1
    assert inspect_qdq(model).problems == []


def test_heads_stay_fp32(quantized: tuple, data: dict[str, Path]) -> None:
    model, report, _ = quantized
    heads = head_nodes(onnx.load(str(data["tiny"])))
    assert {"/class_embed/MatMul", "/bbox_embed/bbox_embed.0/MatMul",
            "/bbox_embed/bbox_embed.4/MatMul"} <= heads
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in heads:
            assert producers.get(node.input[1]) != "DequantizeLinear", node.name
            assert _const(model, node.input[1]).dtype == np.float32
    assert not inspect_qdq(model).quantized & heads
    assert report.quantized_nodes == 6  # every non-head Conv/MatMul with weights


def test_ort_runs_the_int8_nodes_as_integer_kernels(quantized: tuple) -> None:
    model, _, _ = quantized
    optimized = ort_optimized_graph(model)
    assert unfused_weight_ops(optimized) == []
    counts = op_counts(optimized)
    assert counts.get("QLinearConv") == 3 and "Conv" not in counts, counts


def test_int8_close_to_fp32_on_calibration_images(quantized: tuple,
                                                  data: dict[str, Path]) -> None:
    model, _, _ = quantized
    fp32 = ort.InferenceSession(str(data["tiny"]), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    meta = read_meta(model)
    paths = list_images(data["images"])[:8]
    worst_prob, worst_box = 0.0, 0.0
    for feed in iter_feeds(paths, meta):
        (l32, b32), (l8, b8) = fp32.run(None, feed), int8.run(None, feed)
        p32 = np.exp(l32) / np.exp(l32).sum(-1, keepdims=True)
        p8 = np.exp(l8) / np.exp(l8).sum(-1, keepdims=True)
        worst_prob = max(worst_prob, float(np.abs(p32 - p8).max()))
        worst_box = max(worst_box, float(np.abs(b32 - b8).max()))
    # Stated tolerance: class probabilities within 0.02, normalised box coordinates
    # within 0.01 (0.6 px at 64 px) of FP32.
    assert worst_prob < 0.02 and worst_box < 0.01, (worst_prob, worst_box)


def test_int8_passes_check_onnx_and_has_int8_metadata(quantized: tuple) -> None:
    from export.check_onnx import CheckConfig, check_onnx

    model, report, out = quantized
    assert read_meta(model).precision == "int8"
    checked = check_onnx(out, CheckConfig(overflow_scan=False))
    assert checked.ok, checked.format()
    assert read_meta(onnx.load(str(out))).precision == "int8"
    written = json.loads(report_path(out).read_text())
    assert written["fallback_blocks"] == [] and written["fp32_ap"] == pytest.approx(100.0)
    assert written["int8_ap"] <= written["fp32_ap"] and written["within_budget"] is True
    assert set(written["latency_ms"]) == {"fp32", "int8"}
    assert all(v > 0 for v in written["latency_ms"].values())
    text = report.format()
    assert "dAP +0.00 +- 0.00" in text and "by pseudo-ground-truth AP" in text
    assert "AP decoding: official PostProcess" in text and written["decoding"].startswith(
        "official PostProcess")
    # This toy model is too small for INT8 kernels to win: the report must say so.
    ratio = written["latency_ms"]["int8"] / written["latency_ms"]["fp32"]
    assert written["pays"] is (ratio <= 0.9)
    assert ("INT8 does not pay on this model" in text) is (not written["pays"])


def test_calibration_is_deterministic_given_seed(data: dict[str, Path], tmp_path: Path) -> None:
    runs = [quantize_int8(data["tiny"], str(data["images"]),
                          _config(tmp_path / f"run{i}", eval_images=0, latency_runs=0,
                                  calib_images=8, seed=3))[0] for i in range(2)]
    first, second = scales(runs[0]), scales(runs[1])
    assert first.keys() == second.keys() and first
    assert all(np.array_equal(first[k], second[k]) for k in first)
    other = quantize_int8(data["tiny"], str(data["images"]),
                          _config(tmp_path / "run_other", eval_images=0, latency_runs=0,
                                  calib_images=8, seed=4))[0]
    differs = scales(other)
    # Another seed picks other images: some activation scale must change.
    assert any(not np.array_equal(first[k], differs[k]) for k in first if k.startswith("Q"))


def test_truncated_calibration_cache_is_recomputed(data: dict[str, Path], tmp_path: Path) -> None:
    config = _config(tmp_path, eval_images=0, latency_runs=0, calib_images=8)
    reference = scales(quantize_int8(data["tiny"], str(data["images"]), config)[0])
    (cache,) = (tmp_path / "cache").glob("detr-edge-calib-*.json")
    cache.write_text(cache.read_text()[:40])  # as if Ctrl-C hit the write
    again = scales(quantize_int8(data["tiny"], str(data["images"]), config)[0])
    assert all(np.array_equal(reference[k], again[k]) for k in reference)
    json.loads(cache.read_text())  # rewritten whole


def test_image_selection_and_split(data: dict[str, Path]) -> None:
    paths = list_images(data["images"])
    assert select_images(paths, 5, seed=1) == select_images(paths, 5, seed=1)
    assert select_images(paths, 5, seed=1) != select_images(paths, 5, seed=2)
    split = split_images(paths, 10, 6, seed=0)
    assert len(split.calib) == 10 and len(split.held_out) == 6
    assert not set(split.calib) & set(split.held_out)
    # More calibration images never change the held-out set.
    assert split_images(paths, 18, 6, seed=0).held_out == split.held_out
    with pytest.raises(InputError, match="leave none"):
        split_images(paths, 4, len(paths), seed=0)


def test_outlier_block_is_found_and_fixed_by_scales_or_fallback(data: dict[str, Path],
                                                                tmp_path: Path) -> None:
    out = tmp_path / "outlier.int8.onnx"
    # No annotations: the budget is on the pseudo-GT scale, 0.5 of its points here.
    model, report = quantize_int8(data["outlier"], str(data["many"]), _config(
        tmp_path, out_path=str(out), pseudo_budget=0.5, eval_images=48,
        second_best=False))  # no-object slots dropped: the outlier's class damage shows
    assert report.decision_budget == pytest.approx(0.5)
    assert report.sensitivity[0]["block"] == "encoder.layers.1", report.format()
    first = report.frontier[0]
    assert first["name"] == "full INT8" and first["fallback"] == []
    assert -first["dap"] > report.decision_budget  # full INT8 breaks the budget
    # Better scales come before any fallback: every method was tried on the outlier block.
    assert {t["method"] for t in report.method_trials if t["block"] == "encoder.layers.1"} == \
        {"minmax", "entropy", "percentile"}
    assert report.within_budget and report.fp32_ap - report.int8_ap <= report.decision_budget
    fixed_by = set(report.fallback_blocks) | set(report.block_methods)
    assert "encoder.layers.1" in fixed_by, (report.fallback_blocks, report.block_methods)
    quantized = inspect_qdq(model).quantized
    assert "/encoder/layers.0/linear1/MatMul" in quantized
    assert len(quantized) == 6 - len(report.fallback_blocks)  # one node per block here
    meta = read_meta(onnx.load(str(out)))
    assert meta.extra["int8"]["fallback_blocks"] == report.fallback_blocks
    assert meta.extra["int8"]["block_methods"] == report.block_methods
    assert "decided on 48 held-out images" in report.format()
    assert "pseudo-ground-truth AP" in report.format() and report.decoding == "drop no-object slots"


def test_zero_budget_stops_when_a_step_gains_nothing_beyond_noise(data: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    model, report = quantize_int8(data["outlier"], str(data["many"]),
                                  _config(tmp_path, pseudo_budget=0.0, latency_runs=0, eval_images=48,
                                          second_best=False))
    assert report.steps, report.stop_reason
    taken = [s for s in report.steps if s["taken"]]
    assert all(s["ap_gain"] > 2 * s["gain_se"] for s in taken)
    assert report.within_budget or not report.steps[-1]["taken"]
    # Whatever fell back is really FP32 in the model.
    fallen = {n for s in report.sensitivity if s["block"] in report.fallback_blocks
              for n in s["nodes"]}
    assert not inspect_qdq(model).quantized & fallen
    assert len(inspect_qdq(model).quantized) == 6 - len(fallen)


def test_quantizing_no_nodes_leaves_the_model_fp32(data: dict[str, Path], tmp_path: Path) -> None:
    # ORT reads an empty nodes_to_quantize as "everything": all-FP32 must have no Q/DQ.
    from export.int8.qdq_insert import quantize_nodes

    meta = read_meta(onnx.load(str(data["tiny"])))
    feeds = iter_feeds(list_images(data["images"])[:4], meta)
    reader = type("Reader", (), {"get_next": lambda self: next(feeds, None)})()
    model = quantize_nodes(data["tiny"], tmp_path / "none.onnx", [], reader,
                           tmp_path / "cache.json", _config(tmp_path))
    assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear"]


def _candidate(name: str, ap: float, ratio: float) -> Candidate:
    return Candidate(name=name, fallback=[name], methods={}, ap=ap, dap=ap - 50.0, dap_se=0.1,
                     latency_ms=10.0 * ratio, fp32_latency_ms=10.0)


def test_fallback_step_is_chosen_by_ap_recovered_per_ms_lost() -> None:
    current = _candidate("now", 48.0, 0.40)
    # a: +1.0 AP for 2.0 ms (0.5 AP/ms); b: +0.6 AP for 0.5 ms (1.2 AP/ms); c: loses AP.
    trials = [_candidate("a", 49.0, 0.60), _candidate("b", 48.6, 0.45),
              _candidate("c", 47.0, 0.41)]
    best, score = pick_step(current, trials, ref_ms=10.0)
    assert best.name == "b" and score == pytest.approx(1.2)
    # A step that costs no measurable time counts as 1% of FP32 (0.1 ms here).
    free = [_candidate("d", 48.3, 0.39)]
    assert pick_step(current, free, ref_ms=10.0)[1] == pytest.approx(3.0)


def test_a_gain_within_two_standard_errors_is_noise() -> None:
    assert beyond_noise(PairedDifference(diff=0.5, se=0.2, replicates=200, num_images=100))
    assert not beyond_noise(PairedDifference(diff=0.3, se=0.2, replicates=200, num_images=100))
    assert not beyond_noise(PairedDifference(diff=0.0, se=0.0, replicates=200, num_images=100))


def test_output_error_zero_for_identical_and_grows_with_change() -> None:
    rng = np.random.default_rng(0)
    ref = [(rng.normal(size=(2, 5, 4)).astype(np.float32), rng.random((2, 5, 4)))]
    assert output_error(ref, ref) == 0.0
    shifted = [(ref[0][0], ref[0][1] + 0.1)]
    assert output_error(ref, shifted) == pytest.approx(0.1)


def test_blocks_and_candidates(data: dict[str, Path]) -> None:
    model = onnx.load(str(data["tiny"]))
    nodes = {n.name: n for n in quantizable_nodes(model)}
    assert "/MatMul" not in nodes  # attention Q.K^T: activation x activation
    assert "/MatMul" in {n.name for n in quantizable_nodes(model, quantize_attention=True)}
    blocks = {name: block_of(model, n) for name, n in nodes.items()}
    assert blocks["/layer1/layer1.0/Conv"] == "backbone.layer1"
    assert blocks["/input_proj/Conv"] == "input_proj"
    assert blocks["/encoder/layers.1/linear1/MatMul"] == "encoder.layers.1"
    assert blocks["/decoder/layers.0/linear1/MatMul"] == "decoder.layers.0"


@pytest.mark.parametrize("overrides, match", [
    ({"method": "kl"}, "unknown method"),
    ({"ap_budget": -1.0}, "AP points"),
    ({"ap_budget": 0.0005}, "COCO points"),
])
def test_bad_arguments(data: dict[str, Path], tmp_path: Path, overrides: dict,
                       match: str) -> None:
    with pytest.raises(InputError, match=match):
        quantize_int8(data["tiny"], str(data["images"]), _config(tmp_path, **overrides))


def test_refuses_non_fp32_model(quantized: tuple, tmp_path: Path,
                                data: dict[str, Path]) -> None:
    _, _, out = quantized
    with pytest.raises(InputError, match="already int8"):
        quantize_int8(out, str(data["images"]), _config(tmp_path))


def test_real_detr_tiny_graph(detr_tiny_int8: dict[str, Any]) -> None:
    """The real DETR-tiny graph from export-onnx's tracer (random init, 64 px):
    heads found, every block named, TensorRT-format Q/DQ, check-onnx passes."""
    from export.int8.nodes import ensure_node_names, group_blocks

    named = ensure_node_names(onnx.load(str(detr_tiny_int8["fp32"])))
    heads = head_nodes(named)
    assert len(heads) == 4  # class_embed + the 3 bbox_embed layers
    assert all("class_embed" in h or "bbox_embed" in h for h in heads)
    blocks = group_blocks(named, [n for n in quantizable_nodes(named) if n.name not in heads])
    expected = {"backbone.stem", "input_proj"} | {f"backbone.layer{i}" for i in range(1, 5)} \
        | {f"encoder.layers.{i}" for i in range(3)} | {f"decoder.layers.{i}" for i in range(3)}
    assert set(blocks) == expected

    model8, report = detr_tiny_int8["tensorrt_model"], detr_tiny_int8["tensorrt_report"]
    info = inspect_qdq(model8)
    assert info.problems == [] and not info.quantized & heads
    assert report.quantized_nodes == sum(len(v) for v in blocks.values())
    assert not [line for line in report.check_onnx if line.startswith("FAIL")]
    # ONNX Runtime runs every INT8 Conv/Gemm as an integer kernel (no DQ + FP32
    # Conv left, e.g. the convs reading a ResNet block input) and the 8 residual
    # Adds of the ResNet-18 backbone as QLinearAdd.
    optimized = ort_optimized_graph(model8)
    assert unfused_weight_ops(optimized) == []
    counts = op_counts(optimized)
    assert counts.get("QLinearConv") == 21 and counts.get("QLinearAdd") == 8, counts


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(data: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """SIGINT after calibration: exit 130, says how to resume, no output file; the
    same command then finishes from the cached calibration ranges."""
    import os
    import subprocess
    import sys
    import time

    from cli_checks import ROOT, sigint_not_ignored

    out = tmp_path / "m.int8.onnx"
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "runtime.cli", "quantize", "--onnx", str(data["tiny"]),
            "--calib-data", str(data["images"]), "--calib-images", "16", "--eval-images", "8",
            "--threads", "1", "--cache-dir", str(cache), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"
    sigint_not_ignored()
    with open(log, "w") as stderr:
        # Many latency runs keep the command busy after calibration whatever the speed.
        proc = subprocess.Popen([*argv, "--latency-runs", "1000000"], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while not list(cache.glob("*.json")) and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            assert list(cache.glob("*.json")), "calibration did not finish in time"
            time.sleep(1.0)  # into the held-out AP / latency runs
            proc.send_signal(2)  # SIGINT, what Ctrl-C sends
            proc.wait(timeout=60)
        finally:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, err
    assert "quantize interrupted; calibration ranges are cached in" in err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".m.int8.onnx*"))
    cached = list(cache.glob("detr-edge-calib-*.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    done = subprocess.run([*argv, "--latency-runs", "2", "--no-speed-fallback"], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and cached[0].stat().st_mtime_ns == stamp  # ranges reused
    assert all(s["kind"] != "speed" for s in json.loads(report_path(out).read_text())["steps"])
