"""Set-up of a benchmark run (``benchmarks.suite``): the eval images, the artifacts,
which reference the run measures against (``benchmarks.reference``), the canvas
and the preprocessed batch. Torch is imported only when the PyTorch reference runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import detr
from benchmarks import reference as refs
from benchmarks.artifacts import find_artifacts
from benchmarks.rows import STATUS_OK, Row
from detr.data.coco_schema import read_coco_json
from detr.training_resize import from_checkpoint
from runtime.dataset import annotated_split
from runtime.decode import Detections, decode_images
from runtime.errors import InputError
from runtime.metadata import ModelMeta
from runtime.preprocess import Batch, preprocess


@dataclass
class SuiteContext:
    """What every row is evaluated on (built once by :func:`prepare`)."""

    gt: dict[str, Any]  # the split's COCO annotation JSON
    image_ids: list[int]  # the evaluated images, in order
    paths: list[Path]  # their files
    meta: ModelMeta  # canvas, mask and resize rule of the artifacts (and the PyTorch rows)
    batch: Batch  # the eval images preprocessed onto that canvas
    loaded: Any  # detr.checkpoint.LoadedCheckpoint (None without the PyTorch reference)
    threads: int  # CPU threads of every CPU backend
    source: str = refs.PYTORCH  # reference: pytorch | file | onnxruntime (benchmarks.reference)
    no_torch_reason: str = ""  # why the PyTorch rows do not run here
    file_names: list[str] = field(default_factory=list)  # COCO file_name of each image
    dets: dict[tuple[str, str], list[Detections]] = field(default_factory=dict)
    # Raw outputs every row's parity is measured against: PyTorch FP32 on the canvas
    # (live or from the reference file), else ONNX Runtime FP32.
    canvas_outputs: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def parity_key(self) -> tuple[str, str]:
        return ("onnxruntime", "fp32") if self.source == refs.ONNXRUNTIME else ("pytorch", "fp32")


def trained_reference(loaded: Any, config: Any, rule: Any
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """PyTorch FP32 on CPU under the official protocol on the original images
    (``detr.evaluate``, exactly ``detr-edge eval``'s default): the model as trained.
    Returns the report's reference entry and the COCO results (detections)."""
    from detr.evaluate import EvalConfig, evaluate

    eval_config = EvalConfig(data=config.data, split=config.split,
                             resize=(rule.shorter, rule.max_size),
                             second_best=config.second_best, max_images=config.max_images,
                             device="cpu", progress=config.progress)
    result = evaluate(loaded.model, eval_config, label_map=list(loaded.label_map) or None,
                      class_names=list(loaded.class_names) or None)
    return ({"name": "PyTorch FP32 (cpu) as trained", "accuracy": result.metrics,
             "eval_images": result.num_images, "protocol": result.protocol,
             "training_resize": rule.to_dict(), "source": refs.PYTORCH}, result.detections)


def canvas_meta(config: Any, metas: dict[Any, ModelMeta], loaded: Any,
                 rule: Any) -> ModelMeta:
    """Canvas, input form and resize of the artifact rows: those of the artifacts
    (the FP32 ONNX first); without artifacts, what ``export-onnx`` would default to."""
    first = metas.get(("onnxruntime", "fp32")) or next(iter(metas.values()), None)
    if first is not None:
        H, W, use_mask = first.input_height, first.input_width, first.with_mask
        resize = (first.resize_shorter, first.resize_max)
    elif rule is not None:  # the eval canvas of the training rule
        H = W = rule.canvas
        use_mask = rule.padded
        resize = (rule.shorter, rule.max_size) if rule.padded else (None, None)
    else:
        raise InputError(config.artifacts or "--artifacts", "no ONNX model among the "
                         "artifacts: without torch and a checkpoint the canvas and classes "
                         "come from the ONNX metadata")
    if config.height is not None and config.width is not None:
        H, W = config.height, config.width
    if loaded is not None:
        preset, names, label_map = (loaded.preset, list(loaded.class_names),
                                    list(loaded.label_map))
    else:
        assert first is not None
        preset, names, label_map = first.preset, list(first.class_names), list(first.label_map)
    return ModelMeta(preset=preset, input_height=H, input_width=W, class_names=names,
                     label_map=label_map, with_mask=use_mask, batch_size=None,
                     resize_shorter=resize[0], resize_max=resize[1])


def from_file(row: Row, ctx: SuiteContext, data: Any, path: str,
               config: Any) -> None:
    """Fill the PyTorch FP32 (cpu) row from a reference file (measured on the workstation)."""
    row.accuracy = dict(data.header["canvas_accuracy"])
    row.eval_images = len(ctx.image_ids)
    row.artifact = str(path)
    row.status, row.reason = STATUS_OK, (f"from reference file {path} (PyTorch FP32 on the "
                                         "workstation; not timed here)")
    ctx.canvas_outputs = (data.logits, data.boxes)
    ctx.dets[("pytorch", "fp32")] = decode_images(data.logits, data.boxes, ctx.batch, ctx.meta,
                                                   second_best=config.second_best)


def artifact_metas(artifacts: dict[tuple[str, str], Path]) -> dict[Any, ModelMeta]:
    """The metadata of every ONNX artifact, by (backend, precision)."""
    from export.onnx_meta import load_onnx, read_meta  # onnx: only with ONNX artifacts

    return {key: read_meta(load_onnx(path), path) for key, path in artifacts.items()
            if key[0] == "onnxruntime"}


@dataclass
class Prepared:
    """The set-up shared by :func:`prepare` and :func:`write_pytorch_reference`."""

    ctx: SuiteContext
    artifacts: dict[tuple[str, str], Path]
    metas: dict[Any, ModelMeta]
    rule: Any  # detr.training_resize.TrainingResize of the checkpoint (None without torch)
    # What this run evaluates, taken before any row is scored (COCOeval adds keys to the
    # ground truth); only when a reference file is read or written.
    fingerprint: Any = None  # benchmarks.reference_file.Fingerprint


def prepare(config: Any, log: Callable[[str], None]) -> Prepared:
    """Eval images, artifacts, the reference source and the preprocessed canvas batch.
    Imports torch only when the PyTorch reference runs."""
    config.validate()
    img_dir, ann = annotated_split(config.data, config.split)
    gt = read_coco_json(ann)  # validated like training's data; torch-free
    images = gt["images"][: config.max_images] if config.max_images else gt["images"]
    artifacts = find_artifacts(config.artifacts)
    metas = artifact_metas(artifacts)
    source, why = refs.choose_source(config.checkpoint, config.reference, log)
    if config.save_reference and source != refs.PYTORCH:
        raise InputError("--save-reference", f"needs the PyTorch reference, and {why}")
    loaded = rule = None
    threads = config.threads or refs.default_threads()
    if source == refs.PYTORCH:
        import torch  # only for the PyTorch reference: the device path has no torch

        loaded = detr.load_checkpoint(config.checkpoint)
        rule = from_checkpoint(loaded.raw)
        # Same thread count for every CPU backend, so the ratios compare kernels, not cores.
        if config.threads:
            torch.set_num_threads(config.threads)
        threads = config.threads or torch.get_num_threads()
    meta = canvas_meta(config, metas, loaded, rule)
    paths = [img_dir / str(im["file_name"]) for im in images]
    log(f"benchmark: {len(paths)} images from {img_dir} on a {meta.input_height}x"
        f"{meta.input_width} canvas{' with mask' if meta.with_mask else ''}, batch sizes "
        f"{list(config.batch_sizes)}, {config.runs} runs after {config.warmup} warm-up")
    ctx = SuiteContext(gt=gt, image_ids=[int(im["id"]) for im in images], paths=paths,
                       meta=meta, batch=preprocess(paths, meta), loaded=loaded, threads=threads,
                       source=source, no_torch_reason=why,
                       file_names=[str(im["file_name"]) for im in images])
    prep = Prepared(ctx, artifacts, metas, rule)
    if source == refs.FILE or config.save_reference:
        prep.fingerprint = refs.fingerprint_of(ctx, config, artifacts)
    return prep


def reference_entry(prep: Prepared, config: Any, rows: list[Row],
                     log: Callable[[str], None]) -> tuple[dict[str, Any], list[Any]]:
    """The reference before the rows run (PyTorch, or a file that must match this run;
    the file also fills the PyTorch FP32 row). Empty for ONNX Runtime (after the rows)."""
    ctx = prep.ctx
    if ctx.source == refs.PYTORCH:
        return trained_reference(ctx.loaded, config, prep.rule)
    if ctx.source == refs.FILE:
        assert config.reference is not None
        data = refs.load_matching(config.reference, prep.fingerprint)
        from_file(rows[0], ctx, data, config.reference, config)
        return refs.file_reference(data, config.reference), []
    log(f"reference: {refs.ORT_REFERENCE_NOTE}")
    return {}, []
