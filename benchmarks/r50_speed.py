"""DETR-R50 speed, side by side: PyTorch eager FP32 vs ONNX Runtime FP32 vs ONNX
Runtime INT8 (TensorRT Q/DQ format and the cpu format), end to end at 800x1066,
batch 1, random weights.

``python -m benchmarks.r50_speed [--runs N] [--threads T] [--no-int8]``

End to end = ``runtime.preprocess`` of an 800x1066 JPEG (a synthetic scene,
``detr.data.synthetic``) + the model + ``runtime.decode``; the model-alone latency is reported too. Each path runs in
its own worker process, as a deployment would run it. In one process, the
thread pools of PyTorch (OpenMP) and of every ONNX Runtime session compete:
measured that way PyTorch was ~18% slower than alone, which flattered ONNX
Runtime. The workers are timed round-robin (run i of each path back to back,
with a pause between paths so spinning threads go idle), so load from other
processes on a shared machine affects all paths alike. Weights are random (no
downloads here): speed does not depend on the weight values, except that INT8
calibration ranges come from a few synthetic images. Prints the ratios ORT FP32
/ PyTorch FP32 (target <= 0.45) and ORT INT8 / ORT FP32 (target <= 0.35), and
the FP32 compute floor (``benchmarks.compute_floor``): the time the graph's
multiply-adds need at this machine's measured FP32 MatMul peak.

Note: the exporter refuses canvases that are not multiples of 32 (export.onnx_export
validates for TensorRT); here the graph is traced directly at 800x1066 since ONNX
Runtime needs no such alignment, so all paths see exactly the same input.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.compute_floor import compute_floor
from benchmarks.env_info import collect_env_info
from benchmarks.timing import round_robin, stats_from_samples
from detr.data.synthetic import ShapesConfig, make_shapes_dataset, render_image
from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.decode import decode_images
from runtime.detector import open_backend
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess

TARGET_ORT_OVER_TORCH = 0.45
TARGET_INT8_OVER_FP32 = 0.35
NUM_CLASSES = 91  # COCO's class ids, like the official DETR-R50
KINDS = ("model", "e2e", "pre", "post")  # what a worker times in one run (``_worker``)
# Ratio name -> (path a, path b, kind): a's median over b's.
RATIO_PAIRS = {"ort_fp32_e2e / pytorch_fp32_e2e": ("ort_fp32", "pytorch_fp32", "e2e"),
               "ort_int8_e2e / ort_fp32_e2e": ("ort_int8", "ort_fp32", "e2e"),
               "ort_int8_model / ort_fp32_model": ("ort_int8", "ort_fp32", "model"),
               "ort_int8_cpu_e2e / ort_fp32_e2e": ("ort_int8_cpu", "ort_fp32", "e2e"),
               "ort_int8_cpu_model / ort_fp32_model": ("ort_int8_cpu", "ort_fp32", "model")}


@dataclass(frozen=True)
class R50SpeedConfig:
    """How to measure."""

    height: int = 800  # canvas height (paper's shorter side)
    width: int = 1066  # canvas width (4:3 image at 800 px)
    runs: int = 5  # timed runs per path (R50 at this size is seconds per run on 2 cores)
    warmup: int = 1  # untimed runs first
    threads: int | None = None  # CPU threads for torch and ORT (None = torch's setting)
    int8: bool = True  # also quantize and time INT8 (both Q/DQ formats)
    calib_images: int = 4  # synthetic images for INT8 calibration ranges
    work_dir: str | None = None  # ONNX files go here (None = a temporary folder)
    seed: int = 0  # random weights / input
    pause_s: float = 0.25  # idle time between paths (lets spinning worker threads sleep)
    floor: bool = True  # also measure the FP32 compute floor
    preset: str = "detr-r50"  # model preset (tests use detr-tiny on a small canvas)


def _meta(preset: str, H: int, W: int) -> ModelMeta:
    return ModelMeta(preset=preset, input_height=H, input_width=W,
                     class_names=[f"class{i}" for i in range(NUM_CLASSES)],
                     label_map=list(range(1, NUM_CLASSES + 1)))


def _torch_model(preset: str, seed: int) -> Any:
    import torch

    import detr

    torch.manual_seed(seed)  # the same random weights in the exporter and the worker
    return detr.build_model(preset, NUM_CLASSES).eval()


def _worker(conn: Any, path: str | None, image: str, preset: str, H: int, W: int,
            threads: int, seed: int) -> None:
    """One measured path in its own process: ``path`` is an ONNX file, or None for
    PyTorch eager. Answers "run" with ``{kind: ms}`` for kinds model (the backend
    on a ready batch), e2e (preprocess + backend + decode, one more run) and
    pre / post (the two ends of that e2e run); None = exit."""
    meta = _meta(preset, H, W)
    if path is None:
        import torch

        from benchmarks.torch_reference import TorchReference

        torch.set_num_threads(threads)
        backend: Any = TorchReference(_torch_model(preset, seed))
    else:
        backend = open_backend(path, "onnxruntime", providers="cpu", intra_op_threads=threads)
    batch = preprocess([Path(image)], meta)
    conn.send("ready")
    while conn.recv() is not None:
        t0 = time.perf_counter()
        backend.infer(batch.images, batch.mask)
        t1 = time.perf_counter()
        b = preprocess([Path(image)], meta)
        t2 = time.perf_counter()
        logits, boxes = backend.infer(b.images, b.mask)
        t3 = time.perf_counter()
        decode_images(logits, boxes, b, meta, second_best=True)
        t4 = time.perf_counter()
        conn.send({"model": (t1 - t0) * 1e3, "e2e": (t4 - t1) * 1e3, "pre": (t2 - t1) * 1e3,
                   "post": (t4 - t3) * 1e3})  # the KINDS
    backend.close()


def _prepare(config: R50SpeedConfig, work: Path, threads: int, log: Any) -> dict[str, str | None]:
    """Export (and quantize) into ``work`` unless already there; ``{path name: ONNX or None}``."""
    from export.onnx_export import trace_to_onnx
    from export.onnx_meta import write_meta

    H, W = config.height, config.width
    stem = config.preset.replace("-", "_")
    fp32 = work / f"{stem}_fp32.onnx"
    if not fp32.is_file():
        log(f"exporting {config.preset} at {H}x{W} (random weights) -> {fp32}")
        graph = trace_to_onnx(_torch_model(config.preset, config.seed), H, W, 1, False)
        write_meta(graph, _meta(config.preset, H, W))
        atomic_write_bytes(fp32, graph.SerializeToString())
    paths: dict[str, str | None] = {"pytorch_fp32": None, "ort_fp32": str(fp32)}
    if not config.int8:
        return paths
    from export.int8.config import QuantizeConfig
    from export.int8.quantize import quantize_int8

    calib = work / "calib"
    if not (calib / "train").is_dir():
        make_shapes_dataset(calib, ShapesConfig(num_train=config.calib_images, num_val=0,
                                                image_size=max(H, W) // 2), progress=False)
    for name, target in (("ort_int8", "tensorrt"), ("ort_int8_cpu", "cpu")):
        out = work / f"{stem}_{name[4:]}.onnx"
        if not out.is_file():
            log(f"quantizing to INT8, {target} Q/DQ format ({config.calib_images} "
                f"calibration images) -> {out}")
            quantize_int8(fp32, str(calib / "train"), QuantizeConfig(
                out_path=str(out), calib_images=config.calib_images, eval_images=0,
                latency_runs=0, threads=threads, progress=False, target=target))
        paths[name] = str(out)
    return paths


def _input_image(config: R50SpeedConfig, work: Path) -> Path:
    """A scene from the project's generator (shapes on a cluttered, textured background),
    JPEG quality 90, cropped to the canvas. Uniform noise, used before, is the slowest
    possible JPEG to decode (~13 ms vs ~7 ms here at 800x1066). No photo looks like it."""
    H, W = config.height, config.width
    scene, _, _ = render_image(ShapesConfig(image_size=max(H, W), max_objects=8,
                                            seed=config.seed), "val", 0)
    image = work / "input.jpg"
    Image.fromarray(np.ascontiguousarray(scene[:H, :W])).save(image, quality=90)
    return image


Workers = dict[str, tuple[Any, Any]]  # path name -> (process, pipe end)


def _start_workers(models: dict[str, str | None], image: Path, config: R50SpeedConfig,
                   threads: int) -> Workers:
    """One ``_worker`` process per path, each ready (its model loaded, its input
    preprocessed). spawn: a fresh interpreter per path (no inherited thread pools or
    torch state)."""
    ctx = multiprocessing.get_context("spawn")
    workers: Workers = {}
    try:
        for name, path in models.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, path, str(image), config.preset,
                                                     config.height, config.width, threads,
                                                     config.seed), daemon=True)
            proc.start()
            workers[name] = (proc, parent)
            if parent.recv() != "ready":
                raise RuntimeError(f"{name} worker failed to start")
    except BaseException:
        _stop_workers(workers)
        raise
    return workers


def _stop_workers(workers: Workers) -> None:
    for proc, conn in workers.values():
        if proc.is_alive():
            conn.send(None)
        proc.join(timeout=30)


def _measure(workers: Workers, config: R50SpeedConfig) -> dict[str, dict[str, list[float]]]:
    """``{path: {kind: [ms per round]}}`` (kinds of ``_worker``): the workers timed
    round-robin (``benchmarks.timing.round_robin``), ``pause_s`` between paths."""
    bar = tqdm(total=(config.warmup + config.runs) * len(workers), desc="round-robin runs")

    def ask(conn: Any) -> dict[str, float]:
        conn.send("run")
        times = conn.recv()
        bar.update(1)
        return times

    with bar:
        rounds = round_robin({name: functools.partial(ask, conn)
                              for name, (_, conn) in workers.items()},
                             runs=config.runs, warmup=config.warmup, pause_s=config.pause_s)
    return {name: {kind: [r[kind] for r in runs] for kind in KINDS}
            for name, runs in rounds.items()}


def _ratios(paths: dict[str, Any], samples: dict[str, dict[str, list[float]]]
            ) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Ratios of the medians, and paired ratios: the median over rounds of (a / b)
    within each round (on a shared machine the load drifts between rounds, and both
    runs of one round see the same load). None where a path did not run."""
    ratios: dict[str, float | None] = {}
    paired: dict[str, float | None] = {}
    for key, (a, b, kind) in RATIO_PAIRS.items():
        both = a in paths and b in paths
        ratios[key] = paths[a][kind]["median_ms"] / paths[b][kind]["median_ms"] if both else None
        paired[key] = float(np.median(np.array(samples[a][kind]) / np.array(samples[b][kind]))) \
            if both else None
    return ratios, paired


def _floor(onnx_fp32: str, threads: int, paths: dict[str, Any], pre_ms: float,
           post_ms: float) -> dict[str, Any]:
    """The FP32 compute floor (``benchmarks.compute_floor``), with the ORT FP32 model
    time the 0.45 target allows and the FP32 rate it would take."""
    floor = compute_floor(onnx_fp32, threads).to_dict()
    allowed = TARGET_ORT_OVER_TORCH * paths["pytorch_fp32"]["e2e"]["median_ms"] - pre_ms - post_ms
    floor["target_model_ms"] = allowed
    floor["target_gflops"] = 2.0 * floor["macs"] / (allowed * 1e6) if allowed > 0 else None
    floor["ort_fp32_gflops"] = 2.0 * floor["macs"] / (
        paths["ort_fp32"]["model"]["median_ms"] * 1e6)
    return floor


def run_r50_speed(config: R50SpeedConfig, log: Any = print) -> dict[str, Any]:
    """Measure and return ``{'paths': {name: {'e2e': stats, 'model': stats}}, 'ratios': ...}``."""
    threads = config.threads
    if not threads:
        import torch

        threads = torch.get_num_threads()
    work = Path(config.work_dir or tempfile.mkdtemp(prefix="detr-r50-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    image = _input_image(config, work)
    models = _prepare(config, work, threads, log)
    workers = _start_workers(models, image, config, threads)
    try:
        samples = _measure(workers, config)
    finally:
        _stop_workers(workers)
    paths: dict[str, Any] = {}
    for name, kinds in samples.items():
        paths[name] = {k: stats_from_samples(kinds[k], warmup=config.warmup,
                                             batch_size=1).to_dict() for k in ("model", "e2e")}
        log(f"  {name}: e2e p50 {paths[name]['e2e']['median_ms']:.0f} ms, "
            f"model p50 {paths[name]['model']['median_ms']:.0f} ms")
    # Pre/post: medians over every worker's end-to-end runs (the same work in each).
    pre_ms = float(np.median([t for k in samples.values() for t in k["pre"]]))
    post_ms = float(np.median([t for k in samples.values() for t in k["post"]]))
    ratios, paired = _ratios(paths, samples)
    ratios["pre_post_fraction_ort_fp32"] = (pre_ms + post_ms) / paths["ort_fp32"]["e2e"]["median_ms"]
    result = {"config": asdict(config), "threads": threads, "env": collect_env_info().to_dict(),
              "paths": paths, "pre_ms": pre_ms, "post_ms": post_ms, "ratios": ratios,
              "paired_ratios": paired,
              "samples_ms": samples}  # {path: {kind: [ms per round]}}
    if config.floor:
        result["compute_floor"] = _floor(str(models["ort_fp32"]), threads, paths, pre_ms, post_ms)
    return result


def format_result(result: dict[str, Any]) -> str:
    """Human-readable summary with the targets."""
    r = result["ratios"]
    env = result["env"]
    lines = [(f"{result['config']['preset']} {result['config']['height']}x{result['config']['width']} batch 1, "
             f"{result['threads']} CPU threads on {env['cpu_model']} ({env['cpu_cores']} cores), "
             f"median of {result['config']['runs']} runs:")]
    for name, p in result["paths"].items():
        lines.append(f"  {name:14s} e2e p50 {p['e2e']['median_ms']:8.1f} ms (p90 "
                     f"{p['e2e']['p90_ms']:.1f})   model p50 {p['model']['median_ms']:8.1f} ms")

    def show(key: str, target: float | None) -> str:
        v = r.get(key)
        if v is None:
            return f"  {key}: not measured"
        verdict = "" if target is None else (" (meets" if v <= target else " (MISSES") + \
            f" target <= {target})"
        p = result.get("paired_ratios", {}).get(key)
        both = f" (paired per round: {p:.3f})" if p is not None else ""
        return f"  {key}: {v:.3f}{both}{verdict}"
    lines.append("  ratios: of the medians (paired: median of the ratios within each round)")
    lines.append(f"  preprocess {result['pre_ms']:.1f} ms + decode {result['post_ms']:.2f} ms "
                 "(medians over the end-to-end runs)")
    lines += [show("ort_fp32_e2e / pytorch_fp32_e2e", TARGET_ORT_OVER_TORCH),
              show("ort_int8_e2e / ort_fp32_e2e", TARGET_INT8_OVER_FP32),
              show("ort_int8_model / ort_fp32_model", None),
              show("ort_int8_cpu_e2e / ort_fp32_e2e", TARGET_INT8_OVER_FP32),
              show("ort_int8_cpu_model / ort_fp32_model", None),
              show("pre_post_fraction_ort_fp32", 0.03)]
    f = result.get("compute_floor")
    if f:
        lines.append(f"  FP32 compute: {f['macs'] / 1e9:.1f} G multiply-adds "
                     f"({f['conv_macs'] / 1e9:.1f} G in Conv); MatMul peak here "
                     f"{f['peak_gflops']:.0f} GFLOP/s -> floor {f['floor_ms']:.0f} ms")
        lines.append(f"  ORT FP32 runs the graph at {f['ort_fp32_gflops']:.0f} GFLOP/s; the 0.45 "
                     f"target allows {f['target_model_ms']:.0f} ms for the model, i.e. "
                     + (f"{f['target_gflops']:.0f} GFLOP/s ({f['target_gflops'] / f['peak_gflops']:.2f}"
                        "x the MatMul peak)" if f["target_gflops"] else "no time at all"))
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
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the FP32 compute-floor measurement")
    parser.add_argument("--work-dir", default=None, help="keep the ONNX files here (reused)")
    parser.add_argument("--json", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    config = R50SpeedConfig(height=args.height, width=args.width, runs=args.runs,
                            warmup=args.warmup, threads=args.threads, int8=not args.no_int8,
                            work_dir=args.work_dir, floor=not args.no_floor)
    result = run_r50_speed(config)
    print(format_result(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
