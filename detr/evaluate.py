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

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from detr.checkpoint import load_checkpoint
from detr.coco_eval import AP_KEYS, coco_metrics
from detr.data.coco_schema import read_coco_json, require_objects
from detr.torch_forward import forward_numpy
from detr.train.ddp import resolve_device
from detr.training_resize import PAPER, from_checkpoint, rule_canvas
from runtime.coco_results import coco_results
from runtime.dataset import annotated_split, resolve_dataset
from runtime.decode import Detections, decode_images, decoding_protocol
from runtime.errors import DataError, InputError
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess
from runtime.staging import StagedOutputs


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
    """Metrics (floats in 0..1, keys ``detr.coco_eval.AP_KEYS``) and the COCO results list."""

    metrics: dict[str, float]
    detections: list[dict[str, Any]]  # [{'image_id','category_id','bbox':[x,y,w,h],'score'}]
    num_images: int
    files: dict[str, str] = field(default_factory=dict)  # name -> path written
    protocol: dict[str, Any] = field(default_factory=dict)  # resize + decoding used


def _rule(config: EvalConfig) -> tuple[int, int]:
    """(shorter side, longer-side cap) of ``config``'s resize rule (the paper's by default)."""
    return config.resize or (PAPER.shorter, PAPER.max_size)


def eval_meta(config: EvalConfig, class_names: list[str], label_map: list[int],
              preset: str = "") -> ModelMeta:
    """The ``ModelMeta`` that makes ``runtime.preprocess`` do ``config``'s resize:
    the rule on an M x M canvas (every rule size fits), or the fixed canvas."""
    common: dict[str, Any] = {"preset": preset or "detr", "class_names": list(class_names),
                              "label_map": list(label_map), "with_mask": True,
                              "batch_size": None}
    if config.size is not None:
        return ModelMeta(input_height=config.size[0], input_width=config.size[1], **common)
    shorter, longest = _rule(config)
    side = rule_canvas(shorter, longest)
    return ModelMeta(input_height=side, input_width=side, resize_shorter=shorter,
                     resize_max=longest, **common)


def protocol_of(config: EvalConfig) -> dict[str, Any]:
    """What a report says about how AP was measured."""
    if config.size is not None:
        resize = f"fit into a fixed {config.size[0]}x{config.size[1]} canvas, mask"
    else:
        shorter, longest = _rule(config)
        side = rule_canvas(shorter, longest)
        resize = (f"training rule per image: shorter side {shorter}, longer <= {longest}, "
                  f"mask, {side}x{side} canvas")
    return {"resize": resize, "decoding": decoding_protocol(config.second_best)}


@dataclass
class EvalSplit:
    """The images of one annotated split, and the model's classes on it."""

    img_dir: Path  # image folder of the split
    gt: dict[str, Any]  # the annotation JSON (validated like training's data)
    images: list[dict[str, Any]]  # the COCO image records evaluated, in order
    label_map: list[int]  # contiguous model label -> dataset category id
    class_names: list[str]  # one per label


def eval_split(config: EvalConfig, label_map: list[int] | None = None,
               class_names: list[str] | None = None) -> EvalSplit:
    """Read ``config.split`` (``runtime.dataset.annotated_split``; annotations checked by
    ``detr.data.coco_schema``, so evaluation and training accept the same files).

    ``label_map`` None = the dataset's categories sorted by id (what
    ``detr.data.CocoDetection`` uses); class names default to the dataset's."""
    img_dir, ann = annotated_split(config.data, config.split)
    gt = read_coco_json(ann)
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
    return EvalSplit(img_dir, gt, images, list(label_map), list(class_names))


def detect_split(model: nn.Module, split: EvalSplit, meta: ModelMeta,
                 config: EvalConfig) -> list[Detections]:
    """Detections of ``model`` (in eval mode, on its device) on every image of ``split``:
    ``runtime.preprocess`` with the mask, the model, ``runtime.decode`` into original
    pixels. With the mask, boxes are relative to the valid region (= the resized
    original), so scaling by the original size gives original-pixel boxes directly."""
    detections: list[Detections] = []
    with tqdm(total=len(split.images), desc=f"eval {config.split}", dynamic_ncols=True,
              disable=not config.progress, leave=False) as bar:
        for start in range(0, len(split.images), config.batch_size):
            chunk = split.images[start:start + config.batch_size]
            batch = preprocess([split.img_dir / str(img["file_name"]) for img in chunk], meta)
            logits, boxes = forward_numpy(model, batch.images, batch.mask)
            if logits.shape[-1] != len(split.label_map) + 1:
                raise InputError("model", f"predicts {logits.shape[-1] - 1} classes but the "
                                 f"label map has {len(split.label_map)}")
            detections += decode_images(logits, boxes, batch, meta,
                                        second_best=config.second_best)
            bar.update(len(chunk))
    return detections


def evaluate(model: nn.Module, config: EvalConfig, *, label_map: list[int] | None = None,
             class_names: list[str] | None = None, preset: str = "") -> EvalResult:
    """Run ``model`` on every image of ``config.split`` and compute COCO box AP.

    ``label_map`` maps the model's contiguous labels to the dataset's category
    ids; ``None`` = the dataset's categories sorted by id (what
    ``detr.data.CocoDetection`` uses). The model must have ``len(label_map)``
    classes (+ no-object).
    """
    config.validate()
    split = eval_split(config, label_map, class_names)
    meta = eval_meta(config, split.class_names, split.label_map, preset)
    was_training = model.training
    model.eval()
    model.to(resolve_device(config.device))
    try:
        detections = detect_split(model, split, meta, config)
    finally:
        model.train(was_training)
    image_ids = [int(img["id"]) for img in split.images]
    results = coco_results(image_ids, detections, split.label_map)
    # Only the evaluated images count (--max-images); the others would be misses.
    metrics = coco_metrics(split.gt, results, image_ids=image_ids)
    return EvalResult(metrics={k: float(metrics[k]) for k in AP_KEYS}, detections=results,
                      num_images=len(image_ids), protocol=protocol_of(config))


def evaluate_checkpoint(checkpoint: str | Path, config: EvalConfig,
                        out: str | Path | None = None) -> EvalResult:
    """Load a checkpoint (``detr.load_checkpoint``: own, official or HF), evaluate
    it, and write ``out/detections.json`` + ``out/metrics.json`` if ``out``.

    Neither ``config.size`` nor ``config.resize`` given: the checkpoint's own
    training resize rule (``detr.training_resize.from_checkpoint``)."""
    if out is not None:  # before the evaluation: a refusal must not cost a whole eval
        _check_outputs(Path(out), [Path(checkpoint), *_dataset_files(config)])
    loaded = load_checkpoint(checkpoint)
    if config.size is None and config.resize is None:
        rule = from_checkpoint(loaded.raw)
        config = dataclasses.replace(config, resize=(rule.shorter, rule.max_size))
    result = evaluate(loaded.model, config, label_map=loaded.label_map or None,
                      class_names=loaded.class_names or None, preset=loaded.preset)
    if out is not None:
        result.files = _write_outputs(Path(out), checkpoint, config, result)
    return result


EVAL_OUTPUTS = ("detections.json", "metrics.json")


def _dataset_files(config: EvalConfig) -> list[Path]:
    """The annotation file ``eval`` reads (empty when it cannot be found: the
    evaluation itself then reports that)."""
    try:
        ann = resolve_dataset(config.data, config.split).annotations
    except InputError:
        return []
    return [ann] if ann is not None else []


def _check_outputs(out: Path, inputs: list[Path]) -> None:
    """Refuse an ``--out`` whose files would replace one of the inputs
    (an annotation file named ``metrics.json`` in the output folder, say)."""
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
