"""``run_benchmark(config) -> Report``: every backend x precision against PyTorch FP32.

For each row the SAME artifact is used for accuracy and speed:
1. the eval images are preprocessed once (``runtime.preprocess``) onto the
   artifact's canvas; the row's backend runs them; ``runtime.decode`` turns the
   outputs into detections; ``detr.coco_eval`` gives the AP; parity is computed
   against the PyTorch FP32 outputs on the same canvas;
2. speed: warm-up, then ``runs`` timed calls per batch size, of the model alone
   (preprocessed batch in memory) and end to end (image files -> detections),
   with the preprocess and decode costs timed separately; the four are timed
   round-robin so load from other processes hits them alike;
3. peak memory: the high-water RSS (``VmHWM``; ``ru_maxrss`` would include the
   parent's, Linux keeps it across fork+exec) of a fresh subprocess that
   loads the artifact and runs two batch-1 inferences.
A row that cannot run here is 'skipped' with the reason; a row whose artifact
exists but fails during evaluation is 'export ok but evaluation failed'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.artifacts import find_artifacts, tensorrt_unavailable_reason
from benchmarks.rows import STATUS_EVAL_FAILED, STATUS_OK, Row, SpeedResult, all_rows
from runtime.errors import BackendUnavailableError, DetrEdgeError, InputError

ACCURACY_BATCH = 8  # images per call in the accuracy pass when the backend's batch is dynamic
MEMORY_METHOD = ("peak RSS (VmHWM from /proc/self/status) of a fresh Python subprocess that loads the "
                 "artifact and runs 2 batch-1 inferences; includes the interpreter and "
                 "library imports (torch for PyTorch rows)")


_BUILD_HINT = {
    ("onnxruntime", "fp32"): "export-onnx --precision fp32",
    ("onnxruntime", "fp16"): "export-onnx --precision fp16",
    ("onnxruntime", "int8"): "quantize",
    ("onnxruntime", "int8-cpu"): "quantize --target cpu",
    ("tensorrt", "fp32"): "build-engine",
    ("tensorrt", "fp16"): "build-engine",
    ("tensorrt", "int8"): "build-engine",
}

# Targets of the README's headline figures: (figure key, "<=" bound, "abs" = |value| bound).
# The speed targets (ORT/PyTorch <= 0.45, INT8/FP32 <= 0.35, pre+post <= 3% of end to end)
# are stated for DETR-R50 at 800x1066 and are checked by ``python -m benchmarks.r50_speed``,
# not on this model (a small model's pre/post share is larger by nature).
TARGETS: dict[str, tuple[str, float]] = {
    "ort_fp16_AP_delta_vs_torch_fp32 (AP points)": ("abs", 0.1),
    "ort_int8_AP_delta_vs_torch_fp32 (AP points)": ("abs", 0.5),
    "ort_int8-cpu_AP_delta_vs_torch_fp32 (AP points)": ("abs", 0.5),
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to benchmark and how hard."""

    checkpoint: str  # detr-edge / official / HF checkpoint (the PyTorch reference)
    data: str  # dataset root: {split}/ images + annotations/instances_{split}.json
    artifacts: str | None = None  # folder with *.onnx / *.engine files (None = reference only)
    height: int | None = None  # canvas; None = from the artifacts' metadata (else 320)
    width: int | None = None
    batch_sizes: tuple[int, ...] = (1,)  # throughput is measured at each of these
    runs: int = 10  # timed runs per measurement (after warm-up)
    warmup: int = 2  # untimed runs first (graph optimisation, allocator growth)
    max_images: int | None = 50  # eval images (None = whole split)
    split: str = "val"  # dataset split to evaluate on
    out: str = "runs/benchmark"  # report.md / report.json / plot.png go here
    measure_memory: bool = True  # one subprocess per row for its peak RSS
    threads: int | None = None  # ORT intra-op threads (None = torch's thread count)
    progress: bool = True  # tqdm bars

    def validate(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError("--batch-sizes", f"need positive batch sizes, got {self.batch_sizes}")
        if self.runs < 1:
            raise InputError("--runs", f"must be >= 1, got {self.runs}")
        if self.warmup < 0:
            raise InputError("--warmup", f"must be >= 0, got {self.warmup}")
        if self.max_images is not None and self.max_images < 1:
            raise InputError("--max-images", f"must be >= 1, got {self.max_images}")
        if (self.height is None) != (self.width is None):
            raise InputError("--height/--width", "give both or neither")


def _open_backend(row: Row, path: Path, loaded: Any, use_mask: bool,
                  threads: int | None) -> Any:
    """The object with ``infer(images, mask)`` for ``row``."""
    if row.backend == "pytorch":
        from benchmarks.torch_reference import TorchReference

        return TorchReference(loaded.model, row.precision, row.device, use_mask=use_mask)
    from runtime.detector import open_backend

    if row.backend == "onnxruntime":
        return open_backend(path, "onnxruntime", providers="cpu", intra_op_threads=threads)
    return open_backend(path, "tensorrt")


def _infer_all(backend: Any, images: np.ndarray, mask: np.ndarray, batch: int,
               progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Outputs for every preprocessed image, ``batch`` at a time -> [N, Q, K+1], [N, Q, 4]."""
    from tqdm import tqdm

    logits, boxes = [], []
    for start in tqdm(range(0, len(images), batch), desc=desc, disable=not progress,
                      leave=False, dynamic_ncols=True):
        lo, bo = backend.infer(images[start:start + batch], mask[start:start + batch])
        logits.append(lo)
        boxes.append(bo)
    return np.concatenate(logits), np.concatenate(boxes)


def _measure_speed(backend: Any, meta: Any, paths: list[Path], batch_size: int,
                   fixed_batch: int | None, config: BenchmarkConfig) -> SpeedResult:
    """Model-alone and end-to-end latency at ``batch_size`` (see module docstring)."""
    from benchmarks.accuracy import decode_clipped
    from benchmarks.timing import time_interleaved
    from runtime.preprocess import preprocess

    if fixed_batch is not None and fixed_batch != batch_size:
        return SpeedResult(batch_size, skipped_reason=f"graph exported with fixed batch {fixed_batch}")
    chosen = [paths[i % len(paths)] for i in range(batch_size)]
    pre = preprocess(chosen, meta)
    logits, boxes = backend.infer(pre.images, pre.mask)

    def end_to_end() -> None:
        b = preprocess(chosen, meta)
        lo, bo = backend.infer(b.images, b.mask)
        decode_clipped(lo, bo, b, meta)

    stats = time_interleaved({
        "model": lambda: backend.infer(pre.images, pre.mask),
        "e2e": end_to_end,
        "pre": lambda: preprocess(chosen, meta),
        "post": lambda: decode_clipped(logits, boxes, pre, meta),
    }, runs=config.runs, warmup=config.warmup, batch_size=batch_size)
    model, e2e, pre_t, post_t = stats["model"], stats["e2e"], stats["pre"], stats["post"]
    return SpeedResult(batch_size, model=model.to_dict(), end_to_end=e2e.to_dict(),
                       pre_ms=pre_t.median_ms, post_ms=post_t.median_ms)


_PROBE = """
import sys, numpy as np
kind, path, h, w, mask = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1'
x = np.zeros((1, 3, h, w), np.float32); m = np.zeros((1, h, w), bool)
if kind == 'onnxruntime':
    from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    b = OnnxRuntimeBackend(path, providers='cpu')
else:
    import detr
    from benchmarks.torch_reference import TorchReference
    b = TorchReference(detr.load_checkpoint(path).model, use_mask=mask)
for _ in range(2):
    b.infer(x, m)
# VmHWM, not ru_maxrss: Linux keeps the parent's ru_maxrss across fork+exec.
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""


def peak_rss_mb(backend: str, path: Path, height: int, width: int, use_mask: bool) -> float:
    """High-water RSS (MB) of a subprocess that loads ``path`` and runs 2 inferences."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, backend, str(path), str(height), str(width),
         "1" if use_mask else "0"],
        capture_output=True, text=True, check=False, env=dict(os.environ),
        cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory probe failed: {tail[0][:200]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024.0  # VmHWM is in KiB


def _eval_row(row: Row, backend: Any, ctx: dict[str, Any], config: BenchmarkConfig,
              fixed_batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy + speed of one opened backend; fills ``row``; returns its raw outputs."""
    from benchmarks.accuracy import coco_ap, decode_clipped

    pre, meta = ctx["batch"], ctx["meta"]
    # Dynamic-batch backends (PyTorch) evaluate 8 images a call: same outputs, less overhead.
    logits, boxes = _infer_all(backend, pre.images, pre.mask, fixed_batch or ACCURACY_BATCH,
                               config.progress, f"{row.name} accuracy")
    dets = decode_clipped(logits, boxes, pre, meta)
    row.accuracy = coco_ap(ctx["gt"], ctx["image_ids"], dets, meta.label_map)
    row.eval_images = len(dets)
    ctx.setdefault("dets", {})[(row.backend, row.precision)] = dets
    for bs in config.batch_sizes:
        row.speed.append(_measure_speed(backend, meta, ctx["paths"], bs, fixed_batch, config))
    return logits, boxes


def run_benchmark(config: BenchmarkConfig,
                  log: Callable[[str], None] = print) -> Any:
    """Benchmark every backend x precision; write report.md/.json/plot.png to ``config.out``.

    Returns the :class:`benchmarks.report.Report` (paths filled in).
    """
    import detr
    from benchmarks.accuracy import ap_deltas, parity_metrics
    from benchmarks.env_info import collect_env_info
    from benchmarks.report import Report, to_markdown, write_report
    from detr.evaluate import read_gt, split_paths
    from runtime.metadata import ModelMeta
    from runtime.preprocess import preprocess

    config.validate()
    img_dir, ann = split_paths(config.data, config.split)
    gt = read_gt(ann)
    images = gt["images"][: config.max_images] if config.max_images else gt["images"]
    artifacts = find_artifacts(config.artifacts)
    metas = {}
    for key, artifact in artifacts.items():
        if key[0] == "onnxruntime":
            from export.onnx_meta import load_onnx, read_meta

            metas[key] = read_meta(load_onnx(artifact), artifact)
    first = metas.get(("onnxruntime", "fp32")) or next(iter(metas.values()), None)
    if config.height is not None and config.width is not None:
        H, W = config.height, config.width
    elif first is not None:
        H, W = first.input_height, first.input_width
    else:
        H, W = 320, 320
    use_mask = bool(first.with_mask) if first is not None else False

    loaded = detr.load_checkpoint(config.checkpoint)
    import torch

    # Same thread count for every CPU backend, so the ratios compare kernels, not cores.
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = config.threads or torch.get_num_threads()
    meta = ModelMeta(preset=str(loaded.raw.get("preset", "detr")), input_height=H, input_width=W,
                     class_names=list(loaded.class_names), label_map=list(loaded.label_map),
                     with_mask=use_mask, batch_size=None)
    paths = [img_dir / str(im["file_name"]) for im in images]
    log(f"benchmark: {len(paths)} images from {img_dir} on a {H}x{W} canvas, "
        f"batch sizes {list(config.batch_sizes)}, {config.runs} runs after {config.warmup} warm-up")
    ctx: dict[str, Any] = {"gt": gt, "image_ids": [int(im["id"]) for im in images], "meta": meta,
           "paths": paths, "batch": preprocess(paths, meta)}

    rows = all_rows()
    trt_reason = tensorrt_unavailable_reason()
    reference: tuple[np.ndarray, np.ndarray] | None = None
    for row in rows:
        path = artifacts.get((row.backend, row.precision))
        if row.backend == "pytorch":
            path = Path(config.checkpoint)
        if row.device == "cuda" and row.backend == "pytorch":
            import torch

            if not torch.cuda.is_available():
                row.skip("no CUDA GPU")
                continue
        if row.backend == "tensorrt" and trt_reason:
            row.skip(trt_reason)
            continue
        if path is None:
            row.skip(f"no {row.precision.upper()} {'engine' if row.backend == 'tensorrt' else 'ONNX'}"
                     f" in artifacts folder {config.artifacts!r} (build it with "
                     f"`detr-edge {_BUILD_HINT[(row.backend, row.precision)]}`, or run "
                     "`detr-edge pipeline`)")
            continue
        row.artifact, row.artifact_bytes = str(path), path.stat().st_size
        row_meta = metas.get((row.backend, row.precision))
        if row_meta is not None and (row_meta.input_height, row_meta.input_width) != (H, W):
            row.status = STATUS_EVAL_FAILED
            row.reason = (f"artifact was exported for {row_meta.input_height}x"
                          f"{row_meta.input_width}, the benchmark canvas is {H}x{W}")
            continue
        log(f"== {row.name}: {path}")
        backend = None
        try:
            backend = _open_backend(row, path, loaded, use_mask, threads)
            fixed = getattr(backend, "batch_size", None)
            logits, boxes = _eval_row(row, backend, ctx, config, fixed)
            if reference is None and row.backend == "pytorch" and row.precision == "fp32":
                reference = (logits, boxes)
            if reference is not None:
                ref_dets = ctx["dets"][("pytorch", "fp32")]
                row.parity = parity_metrics(reference[0], reference[1], logits, boxes,
                                            ref_dets, ctx["dets"][(row.backend, row.precision)])
            if config.measure_memory and row.device == "cpu":
                row.peak_rss_mb = peak_rss_mb(row.backend, path, H, W, use_mask)
            row.status, row.reason = STATUS_OK, ""
        except BackendUnavailableError as exc:
            row.skip(str(exc))
        except (DetrEdgeError, RuntimeError, ValueError, OSError) as exc:
            row.status = STATUS_EVAL_FAILED
            row.reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            log(f"   {row.name} failed:\n" + traceback.format_exc(limit=3))
        finally:
            if backend is not None:
                backend.close()
    ref_row = rows[0]
    for row in rows:
        if row.accuracy is not None and ref_row.accuracy is not None:
            row.delta_vs_reference = ap_deltas(row.accuracy, ref_row.accuracy)

    report = Report(rows=rows, env=collect_env_info().to_dict(), memory_method=MEMORY_METHOD,
                    settings={"checkpoint": config.checkpoint, "preset": meta.preset,
                              "data": config.data, "split": config.split, "height": H, "width": W,
                              "with_mask": use_mask, "eval_images": len(paths),
                              "batch_sizes": list(config.batch_sizes), "runs": config.runs,
                              "warmup": config.warmup, "artifacts": config.artifacts,
                              "cpu_threads": threads,
                              "config": asdict(config)},
                    figures=headline_figures(rows))
    write_report(report, Path(config.out))
    log(to_markdown(report))
    log(f"report: {report.paths['markdown']} (json: {report.paths['json']}, "
        f"plot: {report.paths['plot']})")
    return report


def headline_figures(rows: list[Row]) -> dict[str, Any]:
    """The ratios the README promises, from this run's rows (None when a row did not run)."""
    def get(backend: str, precision: str) -> Row | None:
        r = next(r for r in rows if r.backend == backend and r.precision == precision)
        return r if r.status == STATUS_OK else None

    def e2e(r: Row | None) -> float | None:
        sp = r.speed_at(1) if r else None
        return sp.end_to_end["median_ms"] if sp and sp.end_to_end else None

    def model(r: Row | None) -> float | None:
        sp = r.speed_at(1) if r else None
        return sp.model["median_ms"] if sp and sp.model else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    torch32, ort32, ort16, ort8 = (get("pytorch", "fp32"), get("onnxruntime", "fp32"),
                                   get("onnxruntime", "fp16"), get("onnxruntime", "int8"))
    ort8cpu = get("onnxruntime", "int8-cpu")
    sp = ort32.speed_at(1) if ort32 else None
    figs: dict[str, Any] = {
        "ort_fp32_e2e_over_torch_fp32_e2e (batch 1)": ratio(e2e(ort32), e2e(torch32)),
        "ort_int8_model_over_ort_fp32_model (batch 1)": ratio(model(ort8), model(ort32)),
        "ort_int8_e2e_over_ort_fp32_e2e (batch 1)": ratio(e2e(ort8), e2e(ort32)),
        "ort_int8-cpu_model_over_ort_fp32_model (batch 1)": ratio(model(ort8cpu), model(ort32)),
        "ort_int8-cpu_e2e_over_ort_fp32_e2e (batch 1)": ratio(e2e(ort8cpu), e2e(ort32)),
        "pre_post_fraction_of_e2e (ORT FP32, batch 1)":
            round(sp.pre_post_fraction, 4) if sp and sp.pre_post_fraction is not None else None,
    }
    for name, r in (("fp16", ort16), ("int8", ort8), ("int8-cpu", ort8cpu)):
        d = r.delta_vs_reference if r else None
        figs[f"ort_{name}_AP_delta_vs_torch_fp32 (AP points)"] = (
            round(d["AP"] * 100, 3) if d else None)
    if ort32 and ort32.delta_vs_reference:
        figs["ort_fp32_AP_delta_vs_torch_fp32 (AP points)"] = round(
            ort32.delta_vs_reference["AP"] * 100, 3)
    return figs


def report_json(path: str | Path) -> dict[str, Any]:
    """Read a report.json back (for tests and the pipeline's summary)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
