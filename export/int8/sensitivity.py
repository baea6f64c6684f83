"""Quantization sensitivity and the FP32-fallback search within an AP budget.

Units: ``detr.coco_eval.coco_metrics`` returns AP in 0..1; everything in this
module (and the quantize report) is in COCO *points* 0..100, converted once in
:meth:`HeldOutEvaluator.ap`. An ``ap_budget`` of 0.5 means INT8 may lose at
most half an AP point against the FP32 ONNX model on the held-out images.

Sensitivity: for each block (backbone stage, input_proj, encoder/decoder layer)
a model where *only* that block is INT8 shows how far its outputs move from FP32
on the held-out images (:func:`output_error`); ``export.int8.search`` tries the
most sensitive blocks first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detr.coco_eval import coco_metrics, load_coco_gt
from detr.coco_resample import coco_matches
from detr.data.coco_schema import read_coco_json
from runtime.coco_results import coco_results
from runtime.decode import softmax
from runtime.detector import Detector
from runtime.errors import DataError
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess

Outputs = list[tuple[np.ndarray, np.ndarray]]  # per batch: logits [B,Q,K+1], boxes [B,Q,4]


def output_error(reference: Outputs, test: Outputs) -> float:
    """Distance of ``test`` outputs from ``reference``, averaged over query slots:
    total variation of the class distributions (0..1) + mean L1 of the
    normalised cxcywh boxes (0..1 per coordinate). 0 = identical."""
    tv, l1, n = 0.0, 0.0, 0
    for (ref_logits, ref_boxes), (logits, boxes) in zip(reference, test, strict=True):
        tv += float(0.5 * np.abs(softmax(ref_logits) - softmax(logits)).sum(-1).sum())
        l1 += float(np.abs(ref_boxes - boxes).mean(-1).sum())
        n += ref_logits.shape[0] * ref_logits.shape[1]
    return (tv + l1) / max(n, 1)


@dataclass(frozen=True)
class BlockSensitivity:
    block: str  # e.g. "encoder.layers.1"
    nodes: list[str]  # ONNX node names of its quantized Conv/MatMul/Gemm
    output_error: float  # output_error() of the model with only this block INT8


def rank_blocks(blocks: dict[str, list[str]],
                measure: Callable[[list[str]], float]) -> list[BlockSensitivity]:
    """Most sensitive first. ``measure(nodes)`` = output error with only ``nodes``
    quantized."""
    results = [BlockSensitivity(block, nodes, measure(nodes)) for block, nodes in blocks.items()]
    return sorted(results, key=lambda r: -r.output_error)


# ---- held-out evaluation with the runtime ------------------------------------------------


class HeldOutEvaluator:
    """Runs ONNX models on held-out images with ``runtime.Detector`` (ONNX Runtime
    CPU) and scores them with ``detr.coco_eval.coco_metrics``.

    Ground truth: the COCO annotation file when given (images matched by file
    name); otherwise *pseudo ground truth* = the FP32 model's ``pseudo_top_k``
    highest-scoring detections per image, which makes AP an FP32-agreement
    score (FP32 scores 100 against itself).
    """

    def __init__(self, fp32_path: str | os.PathLike[str], images: Sequence[Path],
                 annotations: str | os.PathLike[str] | None = None, pseudo_top_k: int = 10,
                 threads: int | None = None, second_best: bool = True,
                 image_ids: Sequence[int] | None = None, exact_int8: bool = False) -> None:
        self.threads = threads
        self.exact_int8 = exact_int8  # run Q/DQ unfused (OnnxRuntimeBackend's exact_int8)
        self.second_best = second_best  # official PostProcess, as the paper's AP
        self._coco: Any = None
        with Detector(fp32_path, backend="onnxruntime", providers="cpu",
                      backend_options={"intra_op_threads": threads}) as det:
            self.meta: ModelMeta = det.meta
            self.batch_size = det.batch_size
        self.batches = [preprocess(list(images[i:i + self.batch_size]), self.meta)
                        for i in range(0, len(images), self.batch_size)]
        self.images = list(images)
        self.gt = self._load_gt(annotations, image_ids) if annotations else None
        self.reference = self.outputs(fp32_path)
        if self.gt is None:
            self.gt = self._pseudo_gt(fp32_path, pseudo_top_k)
        self.pseudo = annotations is None
        self.ground_truth = "annotations" if annotations else f"FP32 top-{pseudo_top_k}"

    def _detector(self, path: str | os.PathLike[str]) -> Detector:
        return Detector(path, backend="onnxruntime", providers="cpu",
                        backend_options={"intra_op_threads": self.threads,
                                         "exact_int8": self.exact_int8})

    def outputs(self, path: str | os.PathLike[str], max_images: int | None = None) -> Outputs:
        """Raw ``(logits, boxes)`` per held-out batch (last batch padded for a
        fixed-batch model, padding rows dropped); the first batches holding
        ``max_images`` images when given (compare with ``reference[:len(out)]``)."""
        out = []
        batches = self.batches if max_images is None else \
            self.batches[:max(1, -(-max_images // self.batch_size))]
        with self._detector(path) as det:
            for batch in batches:
                n, images, mask = len(batch), batch.images, batch.mask
                if det.backend.batch_size is not None and n < det.backend.batch_size:
                    extra = det.backend.batch_size - n
                    images = np.concatenate([images, np.zeros((extra, *images.shape[1:]),
                                                              np.float32)])
                    mask = np.concatenate([mask, np.ones((extra, *mask.shape[1:]), bool)])
                logits, boxes = det.infer(images, mask)
                out.append((logits[:n], boxes[:n]))
        return out

    def detections(self, path: str | os.PathLike[str]) -> list[Any]:
        dets: list[Any] = []
        with self._detector(path) as det:
            for batch in self.batches:
                dets.extend(det.detect(batch, second_best=self.second_best))
        return dets

    def _load_gt(self, annotations: str | os.PathLike[str],
                 image_ids: Sequence[int] | None) -> dict[str, Any]:
        """The annotations of the held-out images: by ``image_ids`` when the dataset
        resolver gave them, else matched by file name."""
        ann = Path(annotations)
        gt = read_coco_json(ann)  # bounded JSON, schema-checked (ids, boxes, categories)
        records = gt.get("images", [])
        by_id = {int(img["id"]): img for img in records}
        if image_ids is None:
            # ROOT/annotations/instances_<split>.json: file_names are relative to
            # ROOT/<split> and may hold sub-folders, so match by that path; by file
            # name alone only for annotations kept elsewhere (--eval-ann).
            image_dir = ann.parent.parent / ann.stem.removeprefix("instances_")
            by_path = {os.path.normpath(image_dir / str(img["file_name"])): img
                       for img in records}
            by_name = {Path(str(img["file_name"])).name: img for img in records}
            found = [by_path.get(os.path.normpath(p)) or by_name.get(p.name)
                     for p in self.images]
            missing = [p.name for p, img in zip(self.images, found) if img is None]
            if missing:
                raise DataError(ann, f"{len(missing)} held-out image(s) are not in the "
                                f"annotations (e.g. {missing[0]}); pass the matching --eval-ann")
            image_ids = [int(img["id"]) for img in found if img is not None]  # all are (above)
        self.image_ids = [int(i) for i in image_ids]
        keep = set(self.image_ids)
        return {"images": [by_id[i] for i in self.image_ids],
                "annotations": [a for a in gt["annotations"] if a.get("image_id") in keep],
                "categories": gt["categories"]}

    def _pseudo_gt(self, fp32_path: str | os.PathLike[str], top_k: int) -> dict[str, Any]:
        """The FP32 detections above one global score threshold, chosen so that
        about ``top_k`` per image survive. A global (not per-image) threshold
        makes every kept detection outrank every dropped one in COCO's
        per-category ranking, so the FP32 model scores exactly 100 AP."""
        self.image_ids = list(range(1, len(self.images) + 1))
        dets = self.detections(fp32_path)
        all_scores = np.sort(np.concatenate([d.scores for d in dets] + [np.zeros(0)]))[::-1]
        keep = min(top_k * len(dets), len(all_scores))
        threshold = float(all_scores[keep - 1]) if keep else np.inf
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        sizes = [tuple(hw) for batch in self.batches for hw in batch.orig_sizes]  # (h, w)
        for image_id, det, (h, w) in zip(self.image_ids, dets, sizes):
            images.append({"id": image_id, "file_name": str(self.images[image_id - 1].name),
                           "height": int(h), "width": int(w)})
            for i in np.flatnonzero(det.scores >= threshold):
                x0, y0, x1, y1 = (float(v) for v in det.boxes[i])
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": int(self.meta.label_map[int(det.labels[i])]),
                                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        categories = [{"id": int(c), "name": n}
                      for c, n in zip(self.meta.label_map, self.meta.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _ground_truth(self) -> Any:
        if self._coco is None:
            if not self.gt or not self.gt["annotations"]:
                raise DataError("held-out images", "no ground-truth boxes to compute AP on "
                                "(use more --eval-images or an annotated dataset)")
            self._coco = load_coco_gt(self.gt)
        return self._coco

    def matches(self, path: str | os.PathLike[str]) -> Any:
        """Per-image COCO matches of the model at ``path`` (``detr.coco_resample``):
        its AP on any resampled image set, for paired bootstrap errors."""
        results = coco_results(self.image_ids, self.detections(path), list(self.meta.label_map))
        return coco_matches(self._ground_truth(), results, self.image_ids)

    def ap(self, path: str | os.PathLike[str]) -> float:
        """COCO box AP@[.5:.95] of the model at ``path``, in points 0..100."""
        results = coco_results(self.image_ids, self.detections(path), list(self.meta.label_map))
        metrics = coco_metrics(self._ground_truth(), results)
        return 100.0 * max(float(metrics["AP"]), 0.0)  # coco_metrics: 0..1 -> COCO points
