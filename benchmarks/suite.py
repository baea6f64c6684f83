"""``run_benchmark(config) -> Report``: every backend x precision against the model as trained.

The reference is PyTorch FP32 under the official evaluation protocol
(``detr-edge eval``'s default): the checkpoint's training resize rule per
original image, the padding mask, the official PostProcess. Every row shows its
AP delta against it (all that deployment costs) and against PyTorch FP32 on the
artifacts' own canvas and input form (the precision/runtime loss alone), so a
canvas or mask loss is told apart from a precision loss. Without torch or a
checkpoint (a device) both come from a reference file written on the
workstation, else ONNX Runtime FP32 is the reference, labelled as such
(``benchmarks.reference``); torch is then never imported.

For each row the SAME artifact is used for accuracy and speed:
1. the eval images are preprocessed once (``runtime.preprocess``) onto the
   artifact's canvas; the row's backend runs them; ``runtime.decode`` (official
   PostProcess) turns the outputs into detections; ``detr.coco_eval`` gives the
   AP; parity is computed against the PyTorch FP32 outputs on the same canvas;
2. speed and peak memory: ``benchmarks.speed``.
A row that cannot run here is 'skipped' with the reason; a row whose artifact
exists but fails during evaluation is 'export ok but evaluation failed'.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import reference as refs
from benchmarks.accuracy import ap_deltas, coco_ap, parity_metrics
from benchmarks.artifacts import tensorrt_unavailable_reason
from benchmarks.env_info import collect_env_info
from benchmarks.figures import headline_figures
from benchmarks.reference_file import save_reference
from benchmarks.report import Report, to_markdown, write_report
from benchmarks.rows import STATUS_EVAL_FAILED, STATUS_OK, Row, all_rows
from benchmarks.speed import MEMORY_METHOD, infer_all, measure_speed, peak_rss_mb
from benchmarks.suite_setup import (
    Prepared,
    SuiteContext,
    prepare,
    reference_entry,
    trained_reference,
)
from benchmarks.torch_reference import TorchReference
from runtime.decode import Detections, decode_images, decoding_protocol
from runtime.detector import open_backend
from runtime.errors import BackendUnavailableError, DetrEdgeError, InputError
from runtime.metadata import ModelMeta

ACCURACY_BATCH = 8  # images per call in the accuracy pass when the backend's batch is dynamic

_BUILD_HINT = {
    ("onnxruntime", "fp32"): "export-onnx --precision fp32",
    ("onnxruntime", "fp16"): "export-onnx --precision fp16",
    ("onnxruntime", "int8"): "quantize",
    ("onnxruntime", "int8-cpu"): "quantize --target cpu",
    ("tensorrt", "fp32"): "build-engine",
    ("tensorrt", "fp16"): "build-engine",
    ("tensorrt", "int8"): "build-engine",
}


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to benchmark and how hard."""

    data: str  # dataset root: {split}/ images + annotations/instances_{split}.json
    # detr-edge / official / HF checkpoint: the PyTorch reference (None or no torch: the
    # reference file, else ONNX Runtime FP32; benchmarks.reference)
    checkpoint: str | None = None
    artifacts: str | None = None  # folder with *.onnx / *.engine files (None = reference only)
    reference: str | None = None  # reference file written on the workstation (used without torch)
    save_reference: str | None = None  # write the PyTorch reference of this run here
    height: int | None = None  # canvas; None = the artifacts' (else the training rule's)
    width: int | None = None
    batch_sizes: tuple[int, ...] = (1,)  # throughput is measured at each of these
    runs: int = 10  # timed runs per measurement (after warm-up)
    warmup: int = 2  # untimed runs first (graph optimisation, allocator growth)
    max_images: int | None = 50  # eval images (None = whole split)
    split: str = "val"  # dataset split to evaluate on
    out: str = "runs/benchmark"  # report.md / report.json / plot.png go here
    measure_memory: bool = True  # one subprocess per row for its peak RSS
    threads: int | None = None  # ORT intra-op threads (None = torch's thread count)
    second_best: bool = True  # official PostProcess (paper's AP); False drops no-object slots
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
        for option, given in (("--checkpoint", self.checkpoint), ("--reference", self.reference)):
            if self.save_reference and given and \
                    os.path.realpath(given) == os.path.realpath(self.save_reference):
                raise InputError("--save-reference", f"would overwrite the input {given}")
        if not self.checkpoint and not self.artifacts:
            raise InputError("--artifacts", "nothing to benchmark: give --artifacts (and "
                             "--checkpoint where torch is installed)")


def _open_backend(row: Row, path: Path, ctx: SuiteContext) -> Any:
    """The object with ``infer(images, mask)`` for ``row``."""
    if row.backend == "pytorch":
        return TorchReference(ctx.loaded.model, row.precision, row.device,
                              use_mask=ctx.meta.with_mask)
    if row.backend == "onnxruntime":
        return open_backend(path, "onnxruntime", providers="cpu", intra_op_threads=ctx.threads)
    return open_backend(path, "tensorrt")


def _canvas_accuracy(backend: Any, ctx: SuiteContext, config: BenchmarkConfig,
                     batch: int, desc: str
                     ) -> tuple[np.ndarray, np.ndarray, list[Detections], dict[str, float]]:
    """``backend`` on every eval image of the canvas batch, ``batch`` images a call:
    raw (logits [N, Q, K+1], boxes [N, Q, 4]), detections in original pixels, COCO AP."""
    pre, meta = ctx.batch, ctx.meta
    logits, boxes = infer_all(backend, pre.images, pre.mask, batch, config.progress, desc)
    dets = decode_images(logits, boxes, pre, meta, second_best=config.second_best)
    return logits, boxes, dets, coco_ap(ctx.gt, ctx.image_ids, dets, meta.label_map)


def _eval_row(row: Row, backend: Any, ctx: SuiteContext, config: BenchmarkConfig,
              fixed_batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy + speed of one opened backend; fills ``row``; returns its raw outputs."""
    # Dynamic-batch backends (PyTorch) evaluate 8 images a call: same outputs, less overhead.
    logits, boxes, dets, row.accuracy = _canvas_accuracy(
        backend, ctx, config, fixed_batch or ACCURACY_BATCH, f"{row.name} accuracy")
    row.eval_images = len(dets)
    ctx.dets[(row.backend, row.precision)] = dets
    for bs in config.batch_sizes:
        row.speed.append(measure_speed(backend, ctx.meta, ctx.paths, bs, fixed_batch,
                                       config.runs, config.warmup))
    return logits, boxes


def _run_row(row: Row, path: Path | None, ctx: SuiteContext, config: BenchmarkConfig,
             metas: dict[Any, ModelMeta], trt_reason: str | None,
             log: Callable[[str], None]) -> None:
    """Evaluate and time one row (or mark why it is skipped / failed)."""
    if row.backend == "pytorch" and ctx.source != refs.PYTORCH:
        row.skip(f"PyTorch does not run here: {ctx.no_torch_reason}")
        return
    if row.device == "cuda" and row.backend == "pytorch":
        import torch

        if not torch.cuda.is_available():
            row.skip("no CUDA GPU")
            return
    if row.backend == "tensorrt" and trt_reason:
        row.skip(trt_reason)
        return
    if path is None:
        row.skip(f"no {row.precision.upper()} {'engine' if row.backend == 'tensorrt' else 'ONNX'}"
                 f" in artifacts folder {config.artifacts!r} (build it with "
                 f"`detr-edge {_BUILD_HINT[(row.backend, row.precision)]}`, or run "
                 "`detr-edge pipeline`)")
        return
    row.artifact, row.artifact_bytes = str(path), path.stat().st_size
    H, W = ctx.meta.input_height, ctx.meta.input_width
    row_meta = metas.get((row.backend, row.precision))
    if row_meta is not None and (row_meta.input_height, row_meta.input_width) != (H, W):
        row.status = STATUS_EVAL_FAILED
        row.reason = (f"artifact was exported for {row_meta.input_height}x"
                      f"{row_meta.input_width}, the benchmark canvas is {H}x{W}")
        return
    log(f"== {row.name}: {path}")
    backend = None
    try:
        backend = _open_backend(row, path, ctx)
        logits, boxes = _eval_row(row, backend, ctx, config, getattr(backend, "batch_size", None))
        key = (row.backend, row.precision)
        if ctx.canvas_outputs is None and key == ctx.parity_key:
            ctx.canvas_outputs = (logits, boxes)
        if ctx.canvas_outputs is not None:
            row.parity = parity_metrics(*ctx.canvas_outputs, logits, boxes,
                                        ctx.dets[ctx.parity_key], ctx.dets[key])
        if config.measure_memory and row.device == "cpu":
            row.peak_rss_mb = peak_rss_mb(row.backend, path, H, W, ctx.meta.with_mask)
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


def _form(meta: ModelMeta) -> str:
    """The rows' canvas and input form, in words."""
    text = f"{meta.input_height}x{meta.input_width} canvas, {'mask' if meta.with_mask else 'no mask'}"
    return text + (f", resize rule {meta.resize_shorter}/{meta.resize_max}"
                   if meta.resize_shorter else "")


def _settings(config: BenchmarkConfig, ctx: SuiteContext) -> dict[str, Any]:
    """What the report states about how the rows were measured."""
    meta = ctx.meta
    return {"checkpoint": config.checkpoint, "preset": meta.preset, "data": config.data,
            "split": config.split, "height": meta.input_height, "width": meta.input_width,
            "with_mask": meta.with_mask,
            "resize": [meta.resize_shorter, meta.resize_max] if meta.resize_shorter else None,
            "decoding": decoding_protocol(config.second_best), "eval_images": len(ctx.paths),
            "batch_sizes": list(config.batch_sizes), "runs": config.runs,
            "warmup": config.warmup, "artifacts": config.artifacts,
            "cpu_threads": ctx.threads, "reference_source": ctx.source,
            "config": asdict(config)}


def _fill_deltas(rows: list[Row], reference: dict[str, Any], source: str) -> None:
    """dAP vs the reference; dAP canvas vs PyTorch FP32 on the canvas (when it ran or
    came from the reference file)."""
    canvas_row = rows[0]  # PyTorch FP32 (cpu) on the artifacts' canvas
    for row in rows:
        if row.accuracy is not None:
            row.delta_vs_trained = ap_deltas(row.accuracy, reference["accuracy"])
            if canvas_row.accuracy is not None and source != refs.ONNXRUNTIME:
                row.delta_vs_canvas = ap_deltas(row.accuracy, canvas_row.accuracy)


def run_benchmark(config: BenchmarkConfig,
                  log: Callable[[str], None] = print) -> Report:
    """Benchmark every backend x precision; write report.md/.json/plot.png to ``config.out``.

    Returns the :class:`benchmarks.report.Report` (paths filled in).
    """
    prep = prepare(config, log)
    ctx = prep.ctx
    rows = all_rows()
    reference, detections = reference_entry(prep, config, rows, log)
    if reference:
        log(f"reference {reference['name']}: AP {100 * reference['accuracy']['AP']:.1f} "
            f"({reference['protocol']['resize']}; {reference['protocol']['decoding']})")
    trt_reason = tensorrt_unavailable_reason()
    for row in rows:
        if row.status == STATUS_OK:  # filled from the reference file
            continue
        path = Path(config.checkpoint) if row.backend == "pytorch" and config.checkpoint \
            else prep.artifacts.get((row.backend, row.precision))
        _run_row(row, path, ctx, config, prep.metas, trt_reason, log)
    if ctx.source == refs.ONNXRUNTIME:
        reference = refs.ort_reference(rows[2], _form(ctx.meta),
                                       decoding_protocol(config.second_best))
    _fill_deltas(rows, reference, ctx.source)
    if config.save_reference:
        _save_reference(prep, config, reference, detections, rows[0], log)
    report = Report(rows=rows, env=collect_env_info().to_dict(), memory_method=MEMORY_METHOD,
                    settings=_settings(config, ctx),
                    figures=headline_figures(rows, ctx.source), reference=reference)
    write_report(report, Path(config.out))
    log(to_markdown(report))
    log(f"report: {report.paths['markdown']} (json: {report.paths['json']}, "
        f"plot: {report.paths.get('plot') or 'not drawn (matplotlib missing)'})")
    return report


def _save_reference(prep: Prepared, config: BenchmarkConfig, reference: dict[str, Any],
                    detections: list[Any], canvas_row: Row, log: Callable[[str], None]) -> None:
    """Write the PyTorch reference of this run to ``config.save_reference``."""
    ctx = prep.ctx
    if canvas_row.accuracy is None or ctx.canvas_outputs is None:
        raise InputError("--save-reference", f"PyTorch FP32 on the canvas did not run "
                         f"({canvas_row.reason}): no reference to write")
    assert config.save_reference is not None
    data = refs.reference_data(reference, detections, canvas_row.accuracy, ctx.canvas_outputs,
                               prep.fingerprint)
    log(f"reference written: {save_reference(config.save_reference, data)}")


def write_pytorch_reference(config: BenchmarkConfig, log: Callable[[str], None] = print
                            ) -> Path:
    """Only the PyTorch reference (as trained + FP32 on the canvas) of ``config``'s
    images, written to ``config.save_reference``; no other row, no report."""
    prep = prepare(config, log)
    ctx = prep.ctx
    if config.save_reference is None or ctx.source != refs.PYTORCH:
        raise InputError("--save-reference", "needs torch, --checkpoint and an output file")
    reference, detections = trained_reference(ctx.loaded, config, prep.rule)
    backend = TorchReference(ctx.loaded.model, use_mask=ctx.meta.with_mask)
    logits, boxes, _, canvas_ap = _canvas_accuracy(backend, ctx, config, ACCURACY_BATCH,
                                                   "PyTorch FP32 on the canvas")
    backend.close()
    data = refs.reference_data(reference, detections, canvas_ap, (logits, boxes),
                               prep.fingerprint)
    return save_reference(config.save_reference, data)
