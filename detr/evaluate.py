"""COCO AP of a DETR model on a COCO-format split, through the deployment path.

Images go through exactly what the edge runtime does (``runtime.image_io``
loading, ``runtime.preprocess`` resize, normalisation, zero padding); the model
runs with the padding mask, so its normalised boxes refer to each image's valid
region, and ``runtime.decode`` maps them to the ORIGINAL image pixels.

The official protocol is the default: each image resized by the checkpoint's
training rule (shorter side S, longer <= M, ``detr.training_resize``), padded
with the mask, the official PostProcess (``second_best``). The padding fills a
fixed M x M canvas (rounded up to the backbone stride 32) rather than each
batch's largest image as official ``main.py`` does: the AP then does not depend
on ``batch_size`` or on which images share a batch, and an export at that canvas
computes exactly the same thing. A model trained with padded batches saw every
amount of padding. ``size`` instead fits every image into a fixed canvas, the
way an export at another canvas sees it.
Metrics come from ``detr.coco_eval`` (pycocotools), detections are written as
COCO results with the dataset's original category ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime.errors import DataError, InputError

METRIC_KEYS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


@dataclass
class EvalConfig:
    """What to evaluate on and how."""

    data: str  # dataset root: {split}/ images + annotations/instances_{split}.json
    split: str = "val"  # split name
    # (shorter side, longer-side cap) of the training resize rule, per image; None = size,
    # or the paper's 800 / 1333 when size is None too.
    resize: tuple[int, int] | None = None
    size: tuple[int, int] | None = None  # fixed canvas (H, W) to fit images into instead
    second_best: bool = True  # official PostProcess (paper's AP); False drops no-object slots
    batch_size: int = 4  # images per forward pass
    max_images: int | None = None  # evaluate only the first N images (quick checks)
    device: str = "auto"  # "auto" = cuda if available else cpu
    progress: bool = True  # tqdm bar

    def validate(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise InputError("--size", f"expected two positive numbers H W, got {self.size}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) <= 0):
            raise InputError("--resize", f"expected two positive numbers S M, got {self.resize}")
        if self.size is not None and self.resize is not None:
            raise InputError("--size/--resize", "give a fixed canvas or a resize rule, not both")
        if self.batch_size <= 0:
            raise InputError("--batch-size", f"must be > 0, got {self.batch_size}")
        if self.max_images is not None and self.max_images <= 0:
            raise InputError("--max-images", f"must be > 0, got {self.max_images}")


@dataclass
class EvalResult:
    """Metrics (floats in 0..1, keys ``METRIC_KEYS``) and the COCO results list."""

    metrics: dict[str, float]
    detections: list[dict[str, Any]]  # [{'image_id','category_id','bbox':[x,y,w,h],'score'}]
    num_images: int
    files: dict[str, str] = field(default_factory=dict)  # name -> path written
    protocol: dict[str, Any] = field(default_factory=dict)  # resize + decoding used


def eval_meta(config: EvalConfig, class_names: list[str], label_map: list[int],
              preset: str = "") -> Any:
    """The ``ModelMeta`` that makes ``runtime.preprocess`` do ``config``'s resize:
    the rule on an M x M canvas (every rule size fits), or the fixed canvas."""
    from detr.training_resize import PAPER, rule_canvas
    from runtime.metadata import ModelMeta

    common = {"preset": preset or "detr", "class_names": list(class_names),
              "label_map": list(label_map), "with_mask": True, "batch_size": None}
    if config.size is not None:
        return ModelMeta(input_height=config.size[0], input_width=config.size[1], **common)
    shorter, longest = config.resize or (PAPER.shorter, PAPER.max_size)
    side = rule_canvas(shorter, longest)
    return ModelMeta(input_height=side, input_width=side, resize_shorter=shorter,
                     resize_max=longest, **common)


def protocol_of(config: EvalConfig) -> dict[str, Any]:
    """What a report says about how AP was measured."""
    from detr.training_resize import rule_canvas
    from runtime.decode import decoding_protocol

    if config.size is not None:
        resize = f"fit into a fixed {config.size[0]}x{config.size[1]} canvas, mask"
    else:
        shorter, longest = config.resize or (800, 1333)
        side = rule_canvas(shorter, longest)
        resize = (f"training rule per image: shorter side {shorter}, longer <= {longest}, "
                  f"mask, {side}x{side} canvas")
    return {"resize": resize, "decoding": decoding_protocol(config.second_best)}


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(image folder, annotation file)`` of ``root/{split}`` (``root`` may be the
    split folder itself; ``runtime.dataset.annotated_split``) with clear errors."""
    from runtime.dataset import annotated_split

    return annotated_split(root, split)


def read_gt(ann: Path) -> dict[str, Any]:
    """The annotation JSON, validated like the training data (``detr.data.coco_schema``):
    evaluation and training accept and reject exactly the same files, with the
    same messages (unknown category ids, negative box sizes, no images, ...)."""
    from detr.data.coco_schema import read_coco_json

    return read_coco_json(ann)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    config: EvalConfig,
    *,
    label_map: list[int] | None = None,
    class_names: list[str] | None = None,
    preset: str = "",
) -> EvalResult:
    """Run ``model`` on every image of ``config.split`` and compute COCO box AP.

    ``label_map`` maps the model's contiguous labels to the dataset's category
    ids; ``None`` = the dataset's categories sorted by id (what
    ``detr.data.CocoDetection`` uses). The model must have ``len(label_map)``
    classes (+ no-object).
    """
    from tqdm import tqdm

    from detr.coco_eval import coco_metrics, detections_to_coco_results
    from detr.data.coco_schema import require_objects
    from detr.train.ddp import resolve_device
    from runtime.decode import decode
    from runtime.preprocess import preprocess

    config.validate()
    img_dir, ann = split_paths(config.data, config.split)
    gt = read_gt(ann)
    categories = sorted(int(c["id"]) for c in gt["categories"])
    if label_map is None:
        label_map = categories
    unknown = sorted(set(label_map) - set(categories))
    if unknown:
        raise DataError(ann, f"the model's category ids {unknown} are not in this dataset "
                        "(trained on another dataset?)")
    if class_names is None:
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
        class_names = [by_id[i] for i in label_map]
    images = gt["images"][: config.max_images] if config.max_images else gt["images"]
    require_objects(gt, ann, {int(img["id"]) for img in images})

    device = resolve_device(config.device)
    was_training = model.training
    model.eval()
    model.to(device)
    meta = eval_meta(config, list(class_names), list(label_map), preset)
    image_ids: list[int] = []
    detections: list[Any] = []
    bar = tqdm(total=len(images), desc=f"eval {config.split}", disable=not config.progress,
               dynamic_ncols=True, leave=False)
    try:
        for start in range(0, len(images), config.batch_size):
            chunk = images[start:start + config.batch_size]
            batch = preprocess([img_dir / str(img["file_name"]) for img in chunk], meta)
            outputs = model(torch.from_numpy(batch.images).to(device),
                            mask=torch.from_numpy(batch.mask).to(device))
            logits = outputs["pred_logits"].float().cpu().numpy()  # [B, Q, K+1]
            boxes = outputs["pred_boxes"].float().cpu().numpy()  # [B, Q, 4] cxcywh of valid region
            if logits.shape[-1] != len(label_map) + 1:
                raise InputError("model", f"predicts {logits.shape[-1] - 1} classes but the "
                                 f"label map has {len(label_map)}")
            # With the mask, boxes are relative to the valid region = the resized original,
            # so scaling by the original size gives original-pixel boxes directly.
            dets = decode(logits, boxes, batch.orig_sizes, second_best=config.second_best)
            for img, det, (h, w) in zip(chunk, dets, batch.orig_sizes):
                det.boxes[:, 0::2] = np.clip(det.boxes[:, 0::2], 0, w)
                det.boxes[:, 1::2] = np.clip(det.boxes[:, 1::2], 0, h)
                image_ids.append(int(img["id"]))
                detections.append(det)
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    results = detections_to_coco_results(image_ids, detections, list(label_map))
    # Only the evaluated images count (--max-images); the others would be misses.
    metrics = coco_metrics(gt, results, image_ids=image_ids)
    return EvalResult(metrics={k: float(metrics[k]) for k in METRIC_KEYS},
                      detections=results, num_images=len(image_ids), protocol=protocol_of(config))


def evaluate_model(model: nn.Module, config: EvalConfig, **kwargs: Any) -> EvalResult:
    """Alias of :func:`evaluate` used by the training loop."""
    return evaluate(model, config, **kwargs)


def evaluate_checkpoint(checkpoint: str | Path, config: EvalConfig,
                        out: str | Path | None = None) -> EvalResult:
    """Load a checkpoint (``detr.load_checkpoint``: own, official or HF), evaluate
    it, and write ``out/detections.json`` + ``out/metrics.json`` if ``out``.

    Neither ``config.size`` nor ``config.resize`` given: the checkpoint's own
    training resize rule (``detr.training_resize.from_checkpoint``)."""
    import dataclasses

    import detr
    from detr.training_resize import from_checkpoint

    if out is not None:  # before the evaluation: a refusal must not cost a whole eval
        _check_outputs(Path(out), [Path(checkpoint), *_dataset_files(config)])
    loaded = detr.load_checkpoint(checkpoint)
    if config.size is None and config.resize is None:
        rule = from_checkpoint(loaded.raw)
        config = dataclasses.replace(config, resize=(rule.shorter, rule.max_size))
    preset = str(loaded.raw.get("preset", "")) if isinstance(loaded.raw, dict) else ""
    result = evaluate(loaded.model, config, label_map=loaded.label_map or None,
                      class_names=loaded.class_names or None, preset=preset)
    if out is not None:
        result.files = _write_outputs(Path(out), checkpoint, config, result)
    return result


EVAL_OUTPUTS = ("detections.json", "metrics.json")


def _dataset_files(config: EvalConfig) -> list[Path]:
    """The annotation file ``eval`` reads (empty when it cannot be found: the
    evaluation itself then reports that)."""
    from runtime.dataset import resolve_dataset

    try:
        ann = resolve_dataset(config.data, config.split).annotations
    except InputError:
        return []
    return [ann] if ann is not None else []


def _check_outputs(out: Path, inputs: list[Path]) -> None:
    """Refuse an ``--out`` whose files would replace one of the inputs
    (an annotation file named ``metrics.json`` in the output folder, say)."""
    import os

    real = {os.path.realpath(p) for p in inputs}
    for name in EVAL_OUTPUTS:
        if os.path.realpath(out / name) in real:
            raise InputError("--out", f"{out / name} is an input of this evaluation; "
                             "choose another output folder")


def _write_outputs(out: Path, checkpoint: str | Path, config: EvalConfig,
                   result: EvalResult) -> dict[str, str]:
    """Write ``detections.json`` (COCO results) and ``metrics.json`` into ``out``
    together: staged, then swapped in for the previous run's pair
    (``runtime.staging.StagedOutputs``), so the two always belong to one run."""
    from runtime.staging import StagedOutputs

    summary = {"checkpoint": str(checkpoint), "data": config.data, "split": config.split,
               "size": list(config.size) if config.size else None,
               "resize": list(config.resize) if config.resize else None,
               "second_best": config.second_best, "protocol": result.protocol,
               "num_images": result.num_images, **result.metrics}
    with StagedOutputs(out, EVAL_OUTPUTS) as staged:
        (staged.path / "detections.json").write_text(json.dumps(result.detections))
        (staged.path / "metrics.json").write_text(
            json.dumps(summary, indent=2, sort_keys=True) + "\n")
        staged.commit()
    return {"detections": str(out / "detections.json"), "metrics": str(out / "metrics.json")}
