"""INT8 that pays on the committed models: the default ``quantize`` of the demo
detr-tiny (detr/assets/detr-tiny-shapes.pth) and of the hard-data model
(detr/assets/detr-tiny-hard.pth: non-square mixed sizes, exported with the mask
at 128x160) keeps real AP within the budget on the val split, decided by real AP
on the val split, and the written model is clearly faster than FP32 on ONNX
Runtime CPU. Small input: 48 val images of each model's synthetic data.

Latency: the written model is re-timed against FP32 as the benchmark's INT8 section
does (``benchmarks.int8_latency.ratio_spread``: 3 repeats of
``benchmarks.timing.time_onnx_models``, the quantizer's own timing: FP32 and INT8
take turns in blocks, so load from other processes hits both alike). The issue's
targets (<= 0.6x cpu format, <= 0.7x TensorRT format) are figures printed here and
by ``make demo``, not asserted: one ratio moves by +-0.1 on a shared 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")

from benchmarks.int8_frontier import RATIO_TARGETS
from benchmarks.int8_latency import one_feed, ratio_spread
from benchmarks.workflow.pipeline import DEMO_CHECKPOINT, PipelineConfig
from export.int8.config import QuantizeConfig
from export.int8.quantize import quantize_int8
from export.int8.verdict import VERDICT_REPEATS


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from detr.data.synthetic import ShapesConfig, make_shapes_dataset
    from export.onnx_export import ExportConfig, export_onnx

    root = tmp_path_factory.mktemp("int8demo")
    p = PipelineConfig()
    data = root / "data"
    make_shapes_dataset(data, ShapesConfig(
        seed=1, num_train=32, num_val=48, image_size=p.image_size, max_objects=p.max_objects,
        size_band_probs=p.size_band_probs, max_large=p.max_large))
    onnx_path = root / "fp32.onnx"
    # The demo model was trained at 128x128 (detr/assets/README.md): the pipeline's canvas.
    export_onnx(ExportConfig(checkpoint=str(DEMO_CHECKPOINT), out=str(onnx_path), height=128,
                             width=128, calib_data=str(data / "train"), calib_images=2))
    return {"data": data, "onnx": onnx_path, "root": root}


HARD_CHECKPOINT = DEMO_CHECKPOINT.parent / "detr-tiny-hard.pth"


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not HARD_CHECKPOINT.is_file():
        pytest.skip(f"{HARD_CHECKPOINT.name} is not committed (the hard-data model)")
    from detr.data.synthetic import HARD_DEFAULTS, ShapesConfig, make_shapes_dataset
    from export.onnx_export import ExportConfig, export_onnx

    root = tmp_path_factory.mktemp("int8hard")
    data = root / "data"
    make_shapes_dataset(data, ShapesConfig(**{**HARD_DEFAULTS, "seed": 1, "num_train": 32,
                                              "num_val": 48}))
    onnx_path = root / "fp32.onnx"
    export_onnx(ExportConfig(checkpoint=str(HARD_CHECKPOINT), out=str(onnx_path), height=128,
                             width=160, with_mask=True, calib_data=str(data), calib_images=2))
    return {"data": data, "onnx": onnx_path, "root": root}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["demo", "hard"])
@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_default_quantize_pays(request: pytest.FixtureRequest, model: str, target: str) -> None:
    demo = request.getfixturevalue(model)
    out = demo["root"] / f"int8_{target}.onnx"
    _, report = quantize_int8(demo["onnx"], str(demo["data"]), QuantizeConfig(
        out_path=str(out), target=target, calib_images=32, latency_runs=30, progress=False))
    text = report.format()
    # Real AP decided, on the val split, and the report says so.
    assert report.ground_truth == "annotations" and report.num_eval_images == 48, text
    assert "by real COCO AP" in text and "val of" in text
    assert report.within_budget and report.int8_ap - report.fp32_ap >= -report.ap_budget, text
    assert report.dap_se is not None and report.dap_se > 0
    assert report.pays and "does not pay" not in text
    (spread,) = ratio_spread(demo["onnx"], [out], one_feed(demo["onnx"], demo["data"] / "val"),
                             repeats=3)
    # quantize's verdict is the benchmark's estimator on the written graph
    # (export.int8.verdict): one median of repeats, its range beside it.
    assert len(report.latency_ratios) == VERDICT_REPEATS, text
    print(f"quantize {report.latency_ratio:.2f} (range {min(report.latency_ratios):.2f}-"
          f"{max(report.latency_ratios):.2f}); benchmark's re-timing {spread.line()}; "
          f"target {RATIO_TARGETS[target]}")
    # Speed targets are benchmark figures (make demo prints them), not timed tests:
    # on this shared 2-core machine one ratio moves by +-0.1. What a test can hold
    # to is that the written INT8 model pays at all: clearly faster than FP32.
    assert spread.median <= PAYS_BOUND, f"{spread.line()}\n{text}"


# Well above the targets (0.6 cpu / 0.7 TensorRT format) and the measured 0.56-0.73
# (README, INT8 section), well below 1.0: a model that does not pay fails.
PAYS_BOUND = 0.85
