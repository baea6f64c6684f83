"""``run_benchmark(config) -> Report``: every backend x precision against the model as trained.

The reference is PyTorch FP32 under the official evaluation protocol
(``detr-edge eval``'s default): the checkpoint's training resize rule per
original image, the padding mask, the official PostProcess. Every row shows its
AP delta against it (all that deployment costs) and against PyTorch FP32 on the
artifacts' own canvas and input form (the precision/runtime loss alone), so a
canvas or mask loss is told apart from a precision loss.

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

import json
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import ap_deltas, parity_metrics
from benchmarks.artifacts import find_artifacts, tensorrt_unavailable_reason
from benchmarks.figures import headline_figures
from benchmarks.rows import STATUS_EVAL_FAILED, STATUS_OK, Row, all_rows
from benchmarks.speed import MEMORY_METHOD, infer_all, measure_speed, peak_rss_mb
from runtime.decode import Detections
from runtime.errors import BackendUnavailableError, DetrEdgeError, InputError
from runtime.metadata import ModelMeta
from runtime.preprocess import Batch

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

    checkpoint: str  # detr-edge / official / HF checkpoint (the PyTorch reference)
    data: str  # dataset root: {split}/ images + annotations/instances_{split}.json
    artifacts: str | None = None  # folder with *.onnx / *.engine files (None = reference only)
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


@dataclass
class SuiteContext:
    """What every row is evaluated on (built once by :func:`run_benchmark`)."""

    gt: dict[str, Any]  # the split's COCO annotation JSON
    image_ids: list[int]  # the evaluated images, in order
    paths: list[Path]  # their files
    meta: ModelMeta  # canvas, mask and resize rule of the artifacts (and the PyTorch rows)
    batch: Batch  # the eval images preprocessed onto that canvas
    loaded: Any  # detr.checkpoint.LoadedCheckpoint
    threads: int  # CPU threads of every CPU backend
    dets: dict[tuple[str, str], list[Detections]] = field(default_factory=dict)
    canvas_outputs: tuple[np.ndarray, np.ndarray] | None = None  # PyTorch FP32 on the canvas


def _open_backend(row: Row, path: Path, ctx: SuiteContext) -> Any:
    """The object with ``infer(images, mask)`` for ``row``."""
    if row.backend == "pytorch":
        from benchmarks.torch_reference import TorchReference

        return TorchReference(ctx.loaded.model, row.precision, row.device,
                              use_mask=ctx.meta.with_mask)
    from runtime.detector import open_backend

    if row.backend == "onnxruntime":
        return open_backend(path, "onnxruntime", providers="cpu", intra_op_threads=ctx.threads)
    return open_backend(path, "tensorrt")


def _eval_row(row: Row, backend: Any, ctx: SuiteContext, config: BenchmarkConfig,
              fixed_batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy + speed of one opened backend; fills ``row``; returns its raw outputs."""
    from benchmarks.accuracy import coco_ap, decode_clipped

    pre, meta = ctx.batch, ctx.meta
    # Dynamic-batch backends (PyTorch) evaluate 8 images a call: same outputs, less overhead.
    logits, boxes = infer_all(backend, pre.images, pre.mask, fixed_batch or ACCURACY_BATCH,
                              config.progress, f"{row.name} accuracy")
    dets = decode_clipped(logits, boxes, pre, meta, second_best=config.second_best)
    row.accuracy = coco_ap(ctx.gt, ctx.image_ids, dets, meta.label_map)
    row.eval_images = len(dets)
    ctx.dets[(row.backend, row.precision)] = dets
    for bs in config.batch_sizes:
        row.speed.append(measure_speed(backend, meta, ctx.paths, bs, fixed_batch,
                                       config.runs, config.warmup))
    return logits, boxes


def trained_reference(loaded: Any, config: BenchmarkConfig, rule: Any) -> dict[str, Any]:
    """PyTorch FP32 on CPU under the official protocol on the original images
    (``detr.evaluate``, exactly ``detr-edge eval``'s default): the model as trained."""
    from detr.evaluate import EvalConfig, evaluate

    eval_config = EvalConfig(data=config.data, split=config.split,
                             resize=(rule.shorter, rule.max_size),
                             second_best=config.second_best, max_images=config.max_images,
                             device="cpu", progress=config.progress)
    result = evaluate(loaded.model, eval_config, label_map=list(loaded.label_map) or None,
                      class_names=list(loaded.class_names) or None)
    return {"name": "PyTorch FP32 (cpu) as trained", "accuracy": result.metrics,
            "eval_images": result.num_images, "protocol": result.protocol,
            "training_resize": rule.to_dict()}


def _canvas_meta(config: BenchmarkConfig, metas: dict[Any, ModelMeta], loaded: Any,
                 rule: Any) -> ModelMeta:
    """Canvas, input form and resize of the artifact rows: those of the artifacts
    (the FP32 ONNX first); without artifacts, what ``export-onnx`` would default to."""
    from runtime.metadata import ModelMeta

    first = metas.get(("onnxruntime", "fp32")) or next(iter(metas.values()), None)
    if first is not None:
        H, W, use_mask = first.input_height, first.input_width, first.with_mask
        resize = (first.resize_shorter, first.resize_max)
    else:  # the eval canvas of the training rule
        H = W = rule.canvas
        use_mask = rule.padded
        resize = (rule.shorter, rule.max_size) if rule.padded else (None, None)
    if config.height is not None and config.width is not None:
        H, W = config.height, config.width
    return ModelMeta(preset=str(loaded.raw.get("preset", "detr")), input_height=H, input_width=W,
                     class_names=list(loaded.class_names), label_map=list(loaded.label_map),
                     with_mask=use_mask, batch_size=None, resize_shorter=resize[0],
                     resize_max=resize[1])


def _run_row(row: Row, path: Path | None, ctx: SuiteContext, config: BenchmarkConfig,
             metas: dict[Any, ModelMeta], trt_reason: str | None,
             log: Callable[[str], None]) -> None:
    """Evaluate and time one row (or mark why it is skipped / failed)."""
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
        if ctx.canvas_outputs is None and (row.backend, row.precision) == ("pytorch", "fp32"):
            ctx.canvas_outputs = (logits, boxes)
        if ctx.canvas_outputs is not None:
            row.parity = parity_metrics(*ctx.canvas_outputs, logits, boxes,
                                        ctx.dets[("pytorch", "fp32")],
                                        ctx.dets[(row.backend, row.precision)])
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


def _artifact_metas(artifacts: dict[tuple[str, str], Path]) -> dict[Any, ModelMeta]:
    """The metadata of every ONNX artifact, by (backend, precision)."""
    from export.onnx_meta import load_onnx, read_meta

    return {key: read_meta(load_onnx(path), path) for key, path in artifacts.items()
            if key[0] == "onnxruntime"}


def _settings(config: BenchmarkConfig, ctx: SuiteContext) -> dict[str, Any]:
    """What the report states about how the rows were measured."""
    from runtime.decode import decoding_protocol

    meta = ctx.meta
    return {"checkpoint": config.checkpoint, "preset": meta.preset, "data": config.data,
            "split": config.split, "height": meta.input_height, "width": meta.input_width,
            "with_mask": meta.with_mask,
            "resize": [meta.resize_shorter, meta.resize_max] if meta.resize_shorter else None,
            "decoding": decoding_protocol(config.second_best), "eval_images": len(ctx.paths),
            "batch_sizes": list(config.batch_sizes), "runs": config.runs,
            "warmup": config.warmup, "artifacts": config.artifacts,
            "cpu_threads": ctx.threads, "config": asdict(config)}


def run_benchmark(config: BenchmarkConfig,
                  log: Callable[[str], None] = print) -> Any:
    """Benchmark every backend x precision; write report.md/.json/plot.png to ``config.out``.

    Returns the :class:`benchmarks.report.Report` (paths filled in).
    """
    import torch

    import detr
    from benchmarks.env_info import collect_env_info
    from benchmarks.report import Report, to_markdown, write_report
    from detr.evaluate import read_gt, split_paths
    from detr.training_resize import from_checkpoint
    from runtime.preprocess import preprocess

    config.validate()
    img_dir, ann = split_paths(config.data, config.split)
    gt = read_gt(ann)
    images = gt["images"][: config.max_images] if config.max_images else gt["images"]
    artifacts = find_artifacts(config.artifacts)
    metas = _artifact_metas(artifacts)
    loaded = detr.load_checkpoint(config.checkpoint)
    rule = from_checkpoint(loaded.raw)
    # Same thread count for every CPU backend, so the ratios compare kernels, not cores.
    if config.threads:
        torch.set_num_threads(config.threads)
    meta = _canvas_meta(config, metas, loaded, rule)
    paths = [img_dir / str(im["file_name"]) for im in images]
    log(f"benchmark: {len(paths)} images from {img_dir} on a {meta.input_height}x"
        f"{meta.input_width} canvas{' with mask' if meta.with_mask else ''}, batch sizes "
        f"{list(config.batch_sizes)}, {config.runs} runs after {config.warmup} warm-up")
    ctx = SuiteContext(gt=gt, image_ids=[int(im["id"]) for im in images], paths=paths,
                       meta=meta, batch=preprocess(paths, meta), loaded=loaded,
                       threads=config.threads or torch.get_num_threads())
    reference = trained_reference(loaded, config, rule)
    log(f"reference {reference['name']}: AP {100 * reference['accuracy']['AP']:.1f} "
        f"({reference['protocol']['resize']}; {reference['protocol']['decoding']})")

    rows = all_rows()
    trt_reason = tensorrt_unavailable_reason()
    for row in rows:
        path = Path(config.checkpoint) if row.backend == "pytorch" else \
            artifacts.get((row.backend, row.precision))
        _run_row(row, path, ctx, config, metas, trt_reason, log)
    canvas_row = rows[0]  # PyTorch FP32 (cpu) on the artifacts' canvas
    for row in rows:
        if row.accuracy is not None:
            row.delta_vs_trained = ap_deltas(row.accuracy, reference["accuracy"])
            if canvas_row.accuracy is not None:
                row.delta_vs_canvas = ap_deltas(row.accuracy, canvas_row.accuracy)

    report = Report(rows=rows, env=collect_env_info().to_dict(), memory_method=MEMORY_METHOD,
                    settings=_settings(config, ctx), figures=headline_figures(rows), reference=reference)
    write_report(report, Path(config.out))
    log(to_markdown(report))
    log(f"report: {report.paths['markdown']} (json: {report.paths['json']}, "
        f"plot: {report.paths['plot']})")
    return report


def report_json(path: str | Path) -> dict[str, Any]:
    """Read a report.json back (for tests and the pipeline's summary)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
