"""Step 5 of the INT8 search (export.int8.speed_fallback): blocks that ONNX Runtime
CPU runs faster in FP32 go back to FP32, only beyond the timing noise and within
the AP budget. The decision rule is checked on given ratios; the whole step on a
small DETR-shaped model (tests/tiny_detr_like.py) with real timing, where the
outcome depends on the machine, so the test holds the bookkeeping to the rule:
every step taken was faster beyond noise and within budget, and the written
model has exactly those blocks in FP32.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")

from tiny_detr_like import export_tiny_detr_like, write_images

from export.int8.config import QuantizeConfig
from export.int8.objective import NOISE_Z, Candidate
from export.int8.qdq_check import inspect_qdq
from export.int8.quantize import quantize_int8
from export.int8.report import speed_lines
from export.int8.speed_fallback import CONFIRM_REPEATS, SpeedTrial, keeps_accuracy, speed_groups

BLOCKS = ["backbone.stem", "backbone.layer1", "input_proj", "encoder.layers.0",
          "encoder.layers.1", "decoder.layers.0"]


def test_groups_cover_the_transformer_its_halves_and_the_stem() -> None:
    groups = dict(speed_groups(BLOCKS, []))
    assert groups == {"transformer": BLOCKS[3:], "encoder": BLOCKS[3:5],
                      "decoder": ["decoder.layers.0"], "backbone stem": ["backbone.stem"]}


def test_groups_skip_fp32_blocks_and_duplicates() -> None:
    # The decoder already FP32: "transformer" would move the same blocks as "encoder".
    groups = speed_groups(BLOCKS, ["decoder.layers.0", "backbone.stem"])
    assert groups == [("transformer", ["encoder.layers.0", "encoder.layers.1"])]
    assert speed_groups(BLOCKS[:3], []) == [("backbone stem", ["backbone.stem"])]
    assert speed_groups(BLOCKS, BLOCKS) == []


@pytest.mark.parametrize(("ratios", "faster"), [
    ((0.90, 0.91, 0.92, 0.90, 0.93), True),  # consistently 9% faster
    ((0.97, 0.96, 0.98, 0.97, 0.97), True),  # small but tight
    ((0.90, 1.10, 0.95, 1.05, 1.00), False),  # mean ~1: noise
    ((0.80, 1.02, 0.85, 1.03, 0.90), False),  # faster on average, not beyond 2 SE
    ((1.10, 1.12, 1.09, 1.11, 1.10), False),  # slower
    ((0.5,), False),  # one repeat has no noise estimate
])
def test_faster_only_beyond_noise(ratios: tuple[float, ...], faster: bool) -> None:
    trial = SpeedTrial("transformer", ("encoder.layers.0",), ratios)
    assert trial.faster_beyond_noise() is faster
    mean, se = trial.log_mean_se
    assert mean == pytest.approx(float(np.mean(np.log(ratios))))
    if len(ratios) > 1:
        assert faster == (mean < -NOISE_Z * se)


def _candidate(dap: float) -> Candidate:
    return Candidate("c", [], {}, ap=40.0 + dap, dap=dap, dap_se=0.1, latency_ms=9.0,
                     fp32_latency_ms=10.0)


def test_accuracy_bar_is_the_budget_or_no_loss_when_already_over() -> None:
    assert keeps_accuracy(_candidate(-0.4), _candidate(-0.1), 0.5)
    assert not keeps_accuracy(_candidate(-0.6), _candidate(-0.1), 0.5)  # leaves the budget
    # Over budget already: a faster step that loses no AP is fine, one that loses is not.
    assert keeps_accuracy(_candidate(-0.7), _candidate(-0.8), 0.5)
    assert not keeps_accuracy(_candidate(-0.9), _candidate(-0.8), 0.5)


def test_report_lines_state_ratio_range_and_verdict() -> None:
    trial = SpeedTrial("encoder", ("encoder.layers.0",), (0.9, 0.92, 0.91))
    step = {"kind": "speed", **trial.to_dict(), "taken": True}
    other = {"kind": "accuracy", "taken": True}
    (line,) = speed_lines([other, step])
    assert "+ FP32 encoder runs at 0.91x" in line and "range 0.90-0.92 over 3" in line
    assert line.endswith("taken")


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, object]:
    root = tmp_path_factory.mktemp("speed")
    tiny = export_tiny_detr_like(root / "tiny.onnx")
    images = write_images(root / "images", 24)
    return quantize_int8(tiny, str(images), QuantizeConfig(
        out_path=str(root / "int8.onnx"), calib_images=8, eval_images=12, latency_runs=5,
        warmup_runs=1, threads=1, progress=False, cache_dir=str(root / "cache")))


def test_speed_steps_follow_the_rule_and_reach_the_written_model(searched: tuple) -> None:
    model, report = searched
    steps = [s for s in report.steps if s.get("kind") == "speed"]
    assert steps, report.format()  # at least one round ran (the tiny model has a transformer)
    assert all(len(s["ratios"]) == CONFIRM_REPEATS for s in steps)
    taken = [s for s in steps if s["taken"]]
    for s in taken:
        assert s["log_ratio"] < -NOISE_Z * s["log_ratio_se"], s
        assert set(s["blocks"]) <= set(report.fallback_blocks)
    # Only the last round may end without a step; every round before it took one.
    assert all(s["taken"] for s in steps[:-1])
    speed_blocks = {b for s in taken for b in s["blocks"]}
    accuracy_blocks = {b for s in report.steps if s.get("kind") == "accuracy" and s["taken"]
                       for b in s["blocks"]}
    assert set(report.fallback_blocks) == speed_blocks | accuracy_blocks
    assert report.within_budget, report.format()
    # The written model: the fallback blocks' nodes carry no Q/DQ, the others do.
    quantized = inspect_qdq(model).quantized
    assert len(quantized) == report.quantized_nodes
    transformer = {"/encoder/layers.0/linear1/MatMul", "/encoder/layers.1/linear1/MatMul",
                   "/decoder/layers.0/linear1/MatMul"}
    if speed_blocks >= {"encoder.layers.0", "encoder.layers.1", "decoder.layers.0"}:
        assert not quantized & transformer
    elif not speed_blocks:
        assert transformer <= quantized
    names = {c["name"] for c in report.frontier}
    assert all(f"+ FP32 {s['group']} (speed)" in names for s in taken)
    assert "speed fallback: + FP32" in report.format()
