"""``make device-check``: the TensorRT path end to end on a machine with a GPU.

1. the demo job (``detr-edge pipeline``: synthetic data, FP32/FP16/INT8 ONNX of the
   demo model, TensorRT engines with their golden check, the benchmark with the
   TensorRT rows), on a reduced image count;
2. DETR-R50 at 800x1066 with random weights: FP32 and FP16 ONNX, engines, golden
   check against ONNX Runtime on random normalised inputs;
3. every engine once more through the CUDA-graph path: its outputs must equal
   the plain path's, and both are timed.

Any mismatch (a failed golden check, a missing engine, a TensorRT benchmark row
that did not run, CUDA-graph outputs that differ) is listed and the exit code is
1. Without a GPU, TensorRT or cuda-python it says so on one line and exits 2:
nothing was checked. Aimed at < 8 minutes on one data-centre GPU (the R50 export
and ONNX Runtime reference run on the CPU).

Usage: ``python -m benchmarks.device_check [--out runs/device-check] [--no-r50]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.timing import time_call
from runtime.engine_file import read_engine_header
from runtime.errors import DetrEdgeError
from runtime.metadata import ModelMeta
from runtime.preprocess import round_up_to_stride

R50_SIZE = (800, 1066)  # the paper's evaluation canvas (height, width); exported as 800x1088
PRECISIONS = ("fp32", "fp16", "int8")


def unavailable_reason() -> str | None:
    """Why this machine cannot run the check (TensorRT, cuda-python, a CUDA GPU), or None."""
    from runtime.backends.tensorrt_backend import tensorrt_available

    return tensorrt_available()


def _engine_problems(engine: Path, label: str) -> list[str]:
    """The golden result recorded in the engine header."""

    if not engine.is_file():
        return [f"{label}: no engine {engine} (see the build log above)"]
    golden = read_engine_header(engine).built_with.get("golden", {})
    if golden.get("passed") is not True:
        return [f"{label}: golden check did not pass: {golden.get('failures') or golden}"]
    return []


def _cuda_graph_problems(engine: Path, label: str, runs: int = 20) -> list[str]:
    """Plain vs CUDA-graph execution of ``engine``: equal outputs, both timed."""
    from runtime.backends.tensorrt_backend import TensorRTBackend

    plain = TensorRTBackend(engine)
    graph = TensorRTBackend(engine, cuda_graph=True)
    try:
        meta = plain.meta
        batch = plain.batch_size or 1
        rng = np.random.default_rng(0)
        images = rng.standard_normal((batch, 3, meta.input_height, meta.input_width),
                                     dtype=np.float32)
        times = {}
        outputs = {}
        for name, backend in (("plain", plain), ("cuda graph", graph)):
            def call(name: str = name, backend: TensorRTBackend = backend) -> None:
                outputs[name] = backend.infer(images)

            # The warm-up run captures the CUDA graph.
            times[name] = time_call(call, runs=runs, warmup=1).mean_ms
        print(f"  {label}: batch {batch}, plain {times['plain']:.2f} ms, "
              f"CUDA graph {times['cuda graph']:.2f} ms per call (mean of {runs})")
        for a, b in zip(outputs["plain"], outputs["cuda graph"]):
            if not np.array_equal(a, b):
                diff = float(np.abs(a - b).max())
                return [f"{label}: CUDA-graph outputs differ from plain execution ({diff:.3g})"]
        return []
    finally:
        graph.close()
        plain.close()


def check_demo(out: Path, max_images: int) -> list[str]:
    """The demo job with engines; problems found."""
    from benchmarks.workflow.pipeline import PipelineConfig, run_pipeline

    result = run_pipeline(PipelineConfig(out=str(out), max_images=max_images, runs=10))
    problems = []
    for precision in PRECISIONS:
        engine = result.artifacts / f"model_{precision}.engine"
        problems += _engine_problems(engine, f"demo {precision}")
        if engine.is_file():
            problems += _cuda_graph_problems(engine, f"demo {precision}")
    report = json.loads((result.report_dir / "report.json").read_text())
    for row in report.get("rows", []):
        if row.get("backend") == "tensorrt" and row.get("status") != "ok":
            problems.append(f"benchmark row tensorrt {row.get('precision')}: "
                            f"{row.get('status')} {row.get('reason', '')}".strip())
    return problems


def check_r50(out: Path) -> list[str]:
    """DETR-R50 (random weights) at 800x1066 -> FP32/FP16 ONNX -> engines + golden check."""
    import torch

    from detr import build_model
    from export.engine_builder import EngineBuildConfig, build_engine
    from export.onnx_export import ExportConfig, export_detr

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model("detr-r50", num_classes=91).eval()
    # The canvas must be a multiple of 32 (backbone stride): 1066 -> 1088.
    height, width = R50_SIZE[0], round_up_to_stride(R50_SIZE[1])
    names = [f"class{i}" for i in range(91)]
    meta = ModelMeta(preset="detr-r50", input_height=height, input_width=width,
                     class_names=names, label_map=list(range(1, 92)))
    problems = []
    for precision in ("fp32", "fp16"):
        onnx_path = out / f"r50_{precision}.onnx"
        engine = out / f"r50_{precision}.engine"
        if not onnx_path.is_file():
            export_detr(model, meta, ExportConfig(checkpoint="<memory>", out=str(onnx_path),
                                                  height=height, width=width,
                                                  precision=precision, calib_images=2))
        try:
            result = build_engine(EngineBuildConfig(str(onnx_path), str(engine),
                                                    verify_images=4))
            print(f"  r50 {precision}: " + (result.golden.format() if result.golden else ""))
        except DetrEdgeError as exc:
            problems.append(f"r50 {precision}: {exc}")
            continue
        problems += _engine_problems(engine, f"r50 {precision}")
        problems += _cuda_graph_problems(engine, f"r50 {precision}", runs=5)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device-check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/device-check", help="work directory")
    parser.add_argument("--max-images", type=int, default=50,
                        help="evaluation images per benchmark row (default 50)")
    parser.add_argument("--no-r50", action="store_true", help="skip the DETR-R50 part")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"device-check: not run, it needs a CUDA GPU with TensorRT and cuda-python: "
              f"{reason}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = Path(args.out)
    problems = check_demo(out / "demo", args.max_images)
    if not args.no_r50:
        problems += check_r50(out / "r50")
    minutes = (time.perf_counter() - start) / 60
    if problems:
        print(f"device-check: FAILED after {minutes:.1f} min:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"device-check: all engines built, verified and benchmarked ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
