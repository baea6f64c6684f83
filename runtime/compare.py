"""Output comparison of two runs of the same DETR graph: the one implementation.

Used by ``export-onnx`` parity (PyTorch vs ONNX Runtime, export/parity.py), the
golden check after ``build-engine`` (ONNX Runtime vs TensorRT,
export/golden.py) and the benchmark's parity columns (reference vs every row,
benchmarks/accuracy.py). numpy only: it runs on the device, which has no torch.

Per output (``logits`` [B,Q,K+1], ``boxes`` [B,Q,4] normalised cxcywh): max and
mean absolute error. Per image: the decoded detections (``runtime.decode``,
paper post-processing) are matched one to one, greedily in decreasing
reference score, each reference detection taking the unused candidate of the
same label with the highest IoU if that IoU >= 0.9. The matched share is
``matched / max(reference count, candidate count)``, so a candidate that adds
spurious detections is penalised as much as one that loses some.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runtime.decode import Detections, decode

if TYPE_CHECKING:
    from runtime.metadata import ModelMeta
    from runtime.preprocess import Batch

MATCH_IOU = 0.9  # a detection "matches" when IoU >= this and the label is the same
OUTPUTS = ("logits", "boxes")


def comparison_sizes(batch: Batch, meta: ModelMeta) -> np.ndarray:
    """int64 [B, 2] (h, w) in CANVAS pixels that two models' boxes are compared in:
    the valid region with a mask input (boxes refer to it), else the whole canvas."""
    if meta.with_mask:
        return batch.valid_sizes
    canvas = np.array([meta.input_height, meta.input_width], dtype=np.int64)
    return np.repeat(canvas[None], len(batch.valid_sizes), axis=0)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N, 4] and [M, 4] xyxy boxes -> [N, M] (0 for an empty union)."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)  # [N, M]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(reference: Detections, other: Detections,
                     iou_min: float = MATCH_IOU) -> int:
    """Number of one-to-one matches (same label, IoU >= ``iou_min``), greedy in
    decreasing reference score, each taking the best unused candidate."""
    if len(reference) == 0 or len(other) == 0:
        return 0
    iou = box_iou_xyxy(reference.boxes.astype(np.float64), other.boxes.astype(np.float64))
    iou[reference.labels[:, None] != other.labels[None, :]] = -1.0
    used = np.zeros(len(other), dtype=bool)
    matched = 0
    for i in np.argsort(-reference.scores, kind="stable"):
        candidates = np.where(used, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_min:
            used[j] = True
            matched += 1
    return matched


@dataclass
class OutputComparison:
    """Errors of a candidate run against a reference run on the same inputs."""

    name: str  # e.g. "batch 4 (dynamic)", "images 0-7"
    batch_size: int
    source: str  # "images from DIR" | "random normalised"
    max_abs: dict[str, float] = field(default_factory=dict)  # output -> max |got - ref|
    mean_abs: dict[str, float] = field(default_factory=dict)
    detections_ref: int = 0
    detections_matched: int = 0  # see the module docstring
    detections_got: int = 0

    @property
    def matched_fraction(self) -> float | None:
        """Matched share of detections; None when neither run detects anything."""
        n = max(self.detections_ref, self.detections_got)
        return None if n == 0 else self.detections_matched / n


def compare_outputs(name: str, source: str, reference: Sequence[np.ndarray],
                    candidate: Sequence[np.ndarray], target_sizes: np.ndarray
                    ) -> OutputComparison:
    """Compare ``(logits, boxes)`` of two runs; ``target_sizes`` [B, 2] (h, w) are the
    pixel sizes the normalised boxes refer to (for decoding)."""
    case = OutputComparison(name, int(reference[0].shape[0]), source)
    add_errors(case, reference, candidate)
    dets_ref = decode(reference[0].astype(np.float32), reference[1].astype(np.float32),
                      target_sizes)
    dets_got = decode(candidate[0].astype(np.float32), candidate[1].astype(np.float32),
                      target_sizes)
    add_detections(case, dets_ref, dets_got)
    return case


def add_errors(case: OutputComparison, reference: Sequence[np.ndarray],
               candidate: Sequence[np.ndarray]) -> None:
    """Max / mean absolute error of ``(logits, boxes)`` into ``case``."""
    for out_name, ref, got in zip(OUTPUTS, reference, candidate):
        if ref.shape != got.shape:
            raise ValueError(f"{out_name}: shapes differ, {ref.shape} vs {got.shape}")
        err = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        case.max_abs[out_name] = float(err.max()) if err.size else 0.0
        case.mean_abs[out_name] = float(err.mean()) if err.size else 0.0


def add_detections(case: OutputComparison, reference: Iterable[Detections],
                   candidate: Iterable[Detections]) -> None:
    """Count and match the per-image detections of both runs into ``case``."""
    for det_ref, det_got in zip(reference, candidate):
        case.detections_ref += len(det_ref)
        case.detections_got += len(det_got)
        case.detections_matched += match_detections(det_ref, det_got)


def summarize(cases: Sequence[OutputComparison]) -> dict[str, float | None]:
    """One dict over all cases: ``<output>_max_abs``, ``<output>_mean_abs`` (mean
    weighted by batch size), ``matched_fraction`` and the detection counts."""
    out: dict[str, float | None] = {}
    total = sum(c.batch_size for c in cases) or 1
    for name in OUTPUTS:
        out[f"{name}_max_abs"] = max((c.max_abs.get(name, 0.0) for c in cases), default=0.0)
        out[f"{name}_mean_abs"] = sum(c.mean_abs.get(name, 0.0) * c.batch_size
                                      for c in cases) / total
    merged = OutputComparison("all", total, "")
    for c in cases:
        merged.detections_ref += c.detections_ref
        merged.detections_got += c.detections_got
        merged.detections_matched += c.detections_matched
    out["matched_fraction"] = merged.matched_fraction
    out["reference_detections"] = float(merged.detections_ref)
    out["candidate_detections"] = float(merged.detections_got)
    return out
