"""The one timing of ONNX models against each other (benchmarks.timing.time_onnx_models):
used by quantize's decision and the benchmark's INT8 section, in blocks so that one
session's spinning threads do not slow the next one's timed runs."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from benchmarks.timing import time_interleaved
from runtime.errors import InputError


def test_blocks_alternate_with_settle_runs() -> None:
    calls: list[str] = []
    stats = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             runs=3, warmup=1, settle=1, block=2)
    # warm-up a b; round 1: a settle + 2 timed, b likewise; round 2: the 1 run left each.
    assert "".join(calls) == "ab" + "aaa" + "bbb" + "aa" + "bb"
    assert stats["a"].runs == stats["b"].runs == 3 and stats["a"].warmup == 1


def test_run_by_run_round_robin_is_the_default() -> None:
    calls: list[str] = []
    time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                     runs=2, warmup=0)
    assert "".join(calls) == "abab"


@pytest.mark.parametrize("kwargs", [{"block": 0}, {"runs": 0}, {"settle": -1}])
def test_bad_counts_raise(kwargs: dict[str, int]) -> None:
    args = {"runs": 2, **kwargs}
    with pytest.raises(InputError, match="must be"):
        time_interleaved({"a": lambda: None}, **args)


def _matmul_models(tmp_path: Path, sizes: dict[str, int], chain: int = 1) -> dict[str, Path]:
    """Per name, ``chain`` [1, n, n] x [n, n] MatMuls in a row (input 'images')."""
    from onnx import TensorProto, helper, numpy_helper, save

    paths = {}
    for name, n in sizes.items():
        w = numpy_helper.from_array(np.full((n, n), 1.0 / n, np.float32), "w")
        names = ["images"] + [f"h{i}" for i in range(chain - 1)] + ["y"]
        graph = helper.make_graph(
            [helper.make_node("MatMul", [a, "w"], [b]) for a, b in pairwise(names)], name,
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, n, n])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, n])], [w])
        paths[name] = tmp_path / f"{name}.onnx"
        save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
             str(paths[name]))
    return paths


def test_time_onnx_models_times_each_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from benchmarks.timing import time_onnx_models

    paths = _matmul_models(tmp_path, {"small": 8, "big": 256})
    small = time_onnx_models({"small": paths["small"]}, {"images": np.ones((1, 8, 8), np.float32)},
                             runs=5, threads=1)["small"]
    both = time_onnx_models({"big": paths["big"], "big2": paths["big"]},
                            {"images": np.ones((1, 256, 256), np.float32)}, runs=5, threads=1)
    assert small.runs == both["big"].runs == both["big2"].runs == 5
    assert small.batch_size == 1 and 0 < small.min_ms <= small.median_ms
    # 16.8 M multiply-adds against 512: the big model is timed as the slower one.
    assert both["big"].median_ms > small.median_ms


def test_ratio_spread_and_profile(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from benchmarks.int8_latency import op_profile, profile_lines, ratio_spread

    fp32 = _matmul_models(tmp_path, {"fp32": 192})["fp32"]
    slow = _matmul_models(tmp_path, {"slow": 192}, chain=8)["slow"]  # 8x the work
    feed = {"images": np.ones((1, 192, 192), np.float32)}
    (spread,) = ratio_spread(fp32, [slow], feed, repeats=2, runs=4, threads=1)
    assert len(spread.ratios) == 2 and spread.fp32_ms > 0 and "over 2 repeats" in spread.line()
    assert spread.median > 1.5, spread.line()
    prof = op_profile(slow, feed, runs=3, threads=1)
    assert list(prof) == ["MatMul"] and prof["MatMul"][1] == 8 and prof["MatMul"][0] > 0
    assert "8 nodes" in profile_lines("m", prof)[0]
