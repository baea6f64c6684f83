"""DETR-R50 speed, side by side in one process: PyTorch eager FP32 vs ONNX Runtime
FP32 vs ONNX Runtime INT8 (Q/DQ), end to end at 800x1066, batch 1, random weights.

``python -m benchmarks.r50_speed [--runs N] [--threads T] [--no-int8]``

End to end = ``runtime.preprocess`` of an 800x1066 image file + the model +
``runtime.decode``; the model-alone latency is reported too. The paths are
timed round-robin (run i of each path back to back) so that load from other
processes on a shared machine affects them alike. Weights are random
(no downloads here): speed does not depend on the weight values, except that
INT8 calibration ranges come from a few synthetic images. Prints the ratios
ORT FP32 / PyTorch FP32 (target <= 0.45) and ORT INT8 / ORT FP32 (target <= 0.35).

Note: the exporter refuses canvases that are not multiples of 32 (export.onnx_export
validates for TensorRT); here the graph is traced directly at 800x1066 since ONNX
Runtime needs no such alignment, so all three paths see exactly the same input.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TARGET_ORT_OVER_TORCH = 0.45
TARGET_INT8_OVER_FP32 = 0.35


@dataclass(frozen=True)
class R50SpeedConfig:
    """How to measure."""

    height: int = 800  # canvas height (paper's shorter side)
    width: int = 1066  # canvas width (4:3 image at 800 px)
    runs: int = 5  # timed runs per path (R50 at this size is seconds per run on 2 cores)
    warmup: int = 1  # untimed runs first
    threads: int | None = None  # CPU threads for torch and ORT (None = torch's setting)
    int8: bool = True  # also quantize and time INT8
    calib_images: int = 4  # synthetic images for INT8 calibration ranges
    work_dir: str | None = None  # ONNX files go here (None = a temporary folder)
    seed: int = 0  # random weights / input


def _e2e(backend_infer: Any, image: Path, meta: Any) -> Any:
    from benchmarks.accuracy import decode_clipped
    from runtime.preprocess import preprocess

    def call() -> None:
        batch = preprocess([image], meta)
        logits, boxes = backend_infer(batch.images, batch.mask)
        decode_clipped(logits, boxes, batch, meta)
    return call


def run_r50_speed(config: R50SpeedConfig, log: Any = print) -> dict[str, Any]:
    """Measure and return ``{'paths': {name: {'e2e': stats, 'model': stats}}, 'ratios': ...}``."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    import detr
    from benchmarks.accuracy import decode_clipped
    from benchmarks.env_info import collect_env_info
    from benchmarks.timing import stats_from_samples, time_call
    from benchmarks.torch_reference import TorchReference
    from export.onnx_export import trace_to_onnx
    from export.onnx_meta import write_meta
    from runtime.atomic import atomic_write_bytes
    from runtime.detector import open_backend
    from runtime.metadata import ModelMeta
    from runtime.preprocess import preprocess

    if config.threads:
        torch.set_num_threads(config.threads)
    threads = config.threads or torch.get_num_threads()
    torch.manual_seed(config.seed)
    H, W = config.height, config.width
    work = Path(config.work_dir or tempfile.mkdtemp(prefix="detr-r50-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    model = detr.build_model("detr-r50", 91).eval()
    meta = ModelMeta(preset="detr-r50", input_height=H, input_width=W,
                     class_names=[f"class{i}" for i in range(91)], label_map=list(range(1, 92)))
    rng = np.random.default_rng(config.seed)
    image = work / "input.jpg"
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(image, quality=90)

    fp32 = work / "detr_r50_fp32.onnx"
    if not fp32.is_file():
        log(f"exporting DETR-R50 at {H}x{W} (random weights) -> {fp32}")
        graph = trace_to_onnx(model, H, W, 1, False)
        write_meta(graph, meta)
        atomic_write_bytes(fp32, graph.SerializeToString())
    backends: dict[str, Any] = {"pytorch_fp32": TorchReference(model)}
    backends["ort_fp32"] = open_backend(fp32, "onnxruntime", providers="cpu",
                                        intra_op_threads=threads)
    if config.int8:
        int8 = work / "detr_r50_int8.onnx"
        if not int8.is_file():
            from detr.data.synthetic import ShapesConfig, make_shapes_dataset
            from export.quantize import QuantizeConfig, quantize_int8

            calib = work / "calib"
            make_shapes_dataset(calib, ShapesConfig(num_train=config.calib_images, num_val=0,
                                                    image_size=max(H, W) // 2), progress=False)
            log(f"quantizing to INT8 ({config.calib_images} calibration images) -> {int8}")
            quantize_int8(fp32, str(calib / "train"), QuantizeConfig(
                out_path=str(int8), calib_images=config.calib_images, eval_images=0,
                latency_runs=0, threads=threads, progress=False))
        backends["ort_int8"] = open_backend(int8, "onnxruntime", providers="cpu",
                                            intra_op_threads=threads)

    # Round-robin: run i of every path is taken back to back, so load from other
    # processes on a shared machine hits all paths alike and the RATIOS stay meaningful.
    batch = preprocess([image], meta)
    samples: dict[str, dict[str, list[float]]] = {n: {"model": [], "e2e": []} for n in backends}
    e2e_calls = {n: _e2e(b.infer, image, meta) for n, b in backends.items()}
    for i in tqdm(range(config.warmup + config.runs), desc="R50 round-robin runs"):
        for name, backend in backends.items():
            for kind, fn in (("model", lambda b=backend: b.infer(batch.images, batch.mask)),
                             ("e2e", e2e_calls[name])):
                t0 = time.perf_counter()
                fn()
                if i >= config.warmup:
                    samples[name][kind].append((time.perf_counter() - t0) * 1000.0)
    paths: dict[str, Any] = {}
    for name, kinds in samples.items():
        paths[name] = {k: stats_from_samples(v, warmup=config.warmup, batch_size=1).to_dict()
                       for k, v in kinds.items()}
        log(f"  {name}: e2e p50 {paths[name]['e2e']['median_ms']:.0f} ms, "
            f"model p50 {paths[name]['model']['median_ms']:.0f} ms")
    # Pre/post cost measured on their own (they are milliseconds; 20 runs are cheap).
    logits, boxes = backends["ort_fp32"].infer(batch.images, batch.mask)
    pre = time_call(lambda: preprocess([image], meta), runs=20, warmup=2)
    post = time_call(lambda: decode_clipped(logits, boxes, batch, meta), runs=20, warmup=2)
    for backend in backends.values():
        backend.close()

    def ratio(a: str, b: str, kind: str) -> float | None:
        if a not in paths or b not in paths:
            return None
        return paths[a][kind]["median_ms"] / paths[b][kind]["median_ms"]

    result = {
        "config": asdict(config), "threads": threads, "env": collect_env_info().to_dict(),
        "paths": paths, "pre_ms": pre.median_ms, "post_ms": post.median_ms,
        "ratios": {
            "ort_fp32_e2e / pytorch_fp32_e2e": ratio("ort_fp32", "pytorch_fp32", "e2e"),
            "ort_int8_e2e / ort_fp32_e2e": ratio("ort_int8", "ort_fp32", "e2e"),
            "ort_int8_model / ort_fp32_model": ratio("ort_int8", "ort_fp32", "model"),
            "pre_post_fraction_ort_fp32": (pre.median_ms + post.median_ms)
            / paths["ort_fp32"]["e2e"]["median_ms"],
        },
    }
    return result


def format_result(result: dict[str, Any]) -> str:
    """Human-readable summary with the targets."""
    r = result["ratios"]
    env = result["env"]
    lines = [(f"DETR-R50 {result['config']['height']}x{result['config']['width']} batch 1, "
             f"{result['threads']} CPU threads on {env['cpu_model']} ({env['cpu_cores']} cores), "
             f"median of {result['config']['runs']} runs:")]
    for name, p in result["paths"].items():
        lines.append(f"  {name:13s} e2e p50 {p['e2e']['median_ms']:8.1f} ms (p90 "
                     f"{p['e2e']['p90_ms']:.1f})   model p50 {p['model']['median_ms']:8.1f} ms")

    def show(key: str, target: float | None) -> str:
        v = r.get(key)
        if v is None:
            return f"  {key}: not measured"
        verdict = "" if target is None else (" (meets" if v <= target else " (MISSES") + \
            f" target <= {target})"
        return f"  {key}: {v:.3f}{verdict}"
    lines.append(f"  preprocess {result['pre_ms']:.1f} ms + decode {result['post_ms']:.2f} ms "
                 "(medians of 20)")
    lines += [show("ort_fp32_e2e / pytorch_fp32_e2e", TARGET_ORT_OVER_TORCH),
              show("ort_int8_e2e / ort_fp32_e2e", TARGET_INT8_OVER_FP32),
              show("ort_int8_model / ort_fp32_model", None),
              show("pre_post_fraction_ort_fp32", 0.03)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.r50_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--work-dir", default=None, help="keep the ONNX files here (reused)")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    config = R50SpeedConfig(height=args.height, width=args.width, runs=args.runs,
                            warmup=args.warmup, threads=args.threads, int8=not args.no_int8,
                            work_dir=args.work_dir)
    result = run_r50_speed(config)
    print(format_result(result))
    if args.json:
        from runtime.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
