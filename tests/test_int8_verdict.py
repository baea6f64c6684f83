"""quantize's latency verdict times the graph it writes against the FP32 file it was
given, with the benchmark's estimator (median of independent interleaved repeats),
and the report's ratio is that median (export/int8/verdict.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
pytest.importorskip("pycocotools")

from tiny_detr_like import export_tiny_detr_like, write_images

import export.int8.quantize as quantize_mod
from benchmarks.int8_latency import RatioSpread
from export.int8.config import QuantizeConfig
from export.int8.quantize import quantize_int8, report_path
from export.int8.verdict import VERDICT_REPEATS, time_verdict


def _graph_bytes(model: onnx.ModelProto) -> bytes:
    """The graph alone (metadata differs by design: precision, the ratio itself)."""
    return model.graph.SerializeToString(deterministic=True)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_verdict_times_the_written_graph_against_the_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    src = export_tiny_detr_like(tmp_path / "tiny.onnx")
    images = write_images(tmp_path / "images")
    seen: list[dict[str, Any]] = []

    def spy(fp32_path: Any, model_path: Any, *args: Any, **kwargs: Any) -> RatioSpread:
        # The real timing runs; the spy only records what was timed.
        timing = time_verdict(fp32_path, model_path, *args, **kwargs)
        seen.append({"fp32": Path(fp32_path), "graph": _graph_bytes(onnx.load(str(model_path))),
                     "timing": timing})
        return timing

    monkeypatch.setattr(quantize_mod, "time_verdict", spy)
    out = tmp_path / "tiny.int8.onnx"
    _, report = quantize_int8(src, str(images), QuantizeConfig(
        out_path=str(out), calib_images=16, eval_images=8, latency_runs=3, warmup_runs=1,
        threads=1, progress=False, cache_dir=str(tmp_path / "cache"), target=target))
    (call,) = seen
    assert call["fp32"] == src  # the user's FP32 file, as the benchmark re-times it
    assert call["graph"] == _graph_bytes(onnx.load(str(out)))  # the written graph
    timing = call["timing"]
    assert len(timing.ratios) == VERDICT_REPEATS and all(r > 0 for r in timing.ratios)
    assert report.latency_ratio == pytest.approx(float(np.median(timing.ratios)))
    assert report.latency_ratios == pytest.approx(list(timing.ratios))
    assert f"median of {VERDICT_REPEATS} repeats" in report.format()
    assert report_path(out).is_file()
