"""Golden check: a freshly built engine against ONNX Runtime on the ONNX it came from.

Silently wrong engines are a known TensorRT failure mode for DETR-style
graphs, so ``build-engine`` runs every new engine on N inputs (images through
``runtime.preprocess``, else random normalised tensors) next to ONNX Runtime
(CPU) on the source ONNX, and compares with ``runtime.compare`` -- the same
code ``export-onnx`` parity and the benchmark use. Beyond the tolerance of the
engine's precision the build fails (``--verify warn`` reports only).

No TensorRT here: the candidate is any ``feed -> (logits, boxes)`` callable,
so the check is tested on a CPU with ONNX Runtime against ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from export.fused_preprocess import parity_frames
from export.int8.calib_data import list_images, select_images
from runtime.backends.base import Backend, pad_batch
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from runtime.compare import (
    MATCH_IOU,
    OutputComparison,
    compare_outputs,
    comparison_sizes,
    summarize,
)
from runtime.errors import InputError
from runtime.fused import fused_source_size
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess, target_size

Feed = dict[str, np.ndarray]
Runner = Callable[[Feed], Sequence[np.ndarray]]  # feed -> (logits [B,Q,K+1], boxes [B,Q,4])
VERIFY_MODES = ("fail", "warn", "off")


@dataclass(frozen=True)
class GoldenTolerance:
    """Largest differences an engine of one precision may show against ONNX Runtime.

    Set by judgement, not yet measured on a GPU: FP32 engines use TF32 for
    convolutions and matrix products by default on Ampere and later
    (``BuilderFlag.TF32``), FP16/INT8 engines fuse and round differently from
    ONNX Runtime's CPU kernels. A miscompiled engine is off by far more.
    """

    logits_mean_abs: float  # mean |logits - ref| over [N, Q, K+1]
    boxes_max_abs: float  # max |boxes - ref| (normalised cxcywh)
    min_matched: float  # share of detections matched at IoU 0.9 (when any exist)


TOLERANCES = {
    "fp32": GoldenTolerance(logits_mean_abs=0.02, boxes_max_abs=0.02, min_matched=0.95),
    "fp16": GoldenTolerance(logits_mean_abs=0.1, boxes_max_abs=0.05, min_matched=0.9),
    # INT8 Q/DQ graph on both sides: only rounding and fusion differ.
    "int8": GoldenTolerance(logits_mean_abs=0.3, boxes_max_abs=0.1, min_matched=0.8),
    # TensorRT 10 implicit INT8 (builder flags) against the FP32 ONNX it calibrated.
    "int8-calibrated": GoldenTolerance(logits_mean_abs=0.5, boxes_max_abs=0.15,
                                       min_matched=0.7),
}


@dataclass
class GoldenReport:
    precision: str  # key of TOLERANCES used
    tolerance: GoldenTolerance
    source: str  # "images from DIR" | "random normalised"
    cases: list[OutputComparison] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, float | None]:
        return summarize(self.cases)

    def failures(self) -> list[str]:
        """One phrase per exceeded tolerance (empty = passed)."""
        s, tol = self.summary, self.tolerance
        out = []
        if (s["logits_mean_abs"] or 0.0) > tol.logits_mean_abs:
            out.append(f"logits mean error {s['logits_mean_abs']:.3g} > {tol.logits_mean_abs:g}")
        if (s["boxes_max_abs"] or 0.0) > tol.boxes_max_abs:
            out.append(f"boxes max error {s['boxes_max_abs']:.3g} > {tol.boxes_max_abs:g}")
        matched = s["matched_fraction"]
        if matched is not None and matched < tol.min_matched:
            out.append(f"{matched:.1%} of detections matched at IoU {MATCH_IOU} "
                       f"< {tol.min_matched:.0%}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "tolerance": asdict(self.tolerance),
                "source": self.source, "images": sum(c.batch_size for c in self.cases),
                "summary": self.summary, "passed": self.passed, "failures": self.failures()}

    def format(self) -> str:
        s = self.summary
        matched = s["matched_fraction"]
        share = "no detections" if matched is None else f"{matched:.1%} matched"
        return (f"golden check vs ONNX Runtime ({self.precision}, {self.source}, "
                f"{sum(c.batch_size for c in self.cases)} inputs): "
                f"logits max {s['logits_max_abs']:.3g} mean {s['logits_mean_abs']:.3g}, "
                f"boxes max {s['boxes_max_abs']:.3g} mean {s['boxes_mean_abs']:.3g}, "
                f"{share} at IoU {MATCH_IOU}: " + ("PASS" if self.passed else
                                                   "FAIL (" + "; ".join(self.failures()) + ")"))


def tolerance_key(engine_precision: str, onnx_precision: str) -> str:
    """Which row of TOLERANCES applies (builder-flag INT8 compares against FP32)."""
    if engine_precision == "int8" and onnx_precision == "fp32":
        return "int8-calibrated"
    if engine_precision == "fp16" and onnx_precision == "fp32":
        return "fp16"
    return engine_precision


def golden_inputs(meta: ModelMeta, data_dir: str | None, num_images: int, batch: int,
                  seed: int = 0) -> tuple[str, Iterator[tuple[Feed, np.ndarray, int]]]:
    """``(source, iterator of (feed, target_sizes [B,2], real images in the feed))``.

    Batches hold ``batch`` inputs; a short last batch is padded (empty
    canvases) up to ``batch`` for a fixed-batch model. Target sizes: the valid
    region with a mask input, else the whole canvas (as in export parity).
    """
    if num_images <= 0:
        raise InputError("--verify-images", f"must be positive, got {num_images}")
    if fused_source_size(meta) is not None:  # --fused-preprocess: uint8 frames go in
        return _frame_batches(meta, data_dir, num_images, batch, seed)
    if data_dir is not None:
        paths = select_images(list_images(data_dir), num_images, seed)
        return f"images from {data_dir}", _image_batches(meta, paths, batch)
    return "random normalised", _random_batches(meta, num_images, batch, seed)


def _finish(meta: ModelMeta, images: np.ndarray, mask: np.ndarray, sizes: np.ndarray
            ) -> tuple[Feed, np.ndarray, int]:
    n = images.shape[0]
    if meta.batch_size is not None and n < meta.batch_size:
        images, padded = pad_batch(images, mask, meta.batch_size)
        assert padded is not None
        mask = padded
        sizes = np.concatenate([sizes, np.repeat(sizes[:1], meta.batch_size - n, axis=0)])
    fused = images.dtype == np.uint8  # frames of a --fused-preprocess model, as they are
    feed = {"images": np.ascontiguousarray(images, dtype=None if fused else np.float32)}
    if meta.with_mask and not fused:
        feed["mask"] = np.ascontiguousarray(mask, dtype=bool)
    return feed, sizes, n


def _image_batches(meta: ModelMeta, paths: Sequence[Any], batch: int
                   ) -> Iterator[tuple[Feed, np.ndarray, int]]:
    for start in range(0, len(paths), batch):
        b = preprocess(list(paths[start:start + batch]), meta)
        yield _finish(meta, b.images, b.mask, comparison_sizes(b, meta))


def _random_batches(meta: ModelMeta, num_images: int, batch: int, seed: int
                    ) -> Iterator[tuple[Feed, np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    h, w = meta.input_height, meta.input_width
    for start in range(0, num_images, batch):
        n = min(batch, num_images - start)
        images = rng.standard_normal((n, 3, h, w), dtype=np.float32)
        sizes = np.repeat(np.array([[h, w]], dtype=np.int64), n, axis=0)
        yield _finish(meta, images, np.zeros((n, h, w), dtype=bool), sizes)


def _frame_batches(meta: ModelMeta, data_dir: str | None, num_images: int, batch: int,
                   seed: int) -> tuple[str, Iterator[tuple[Feed, np.ndarray, int]]]:
    """uint8 [B, Hs, Ws, 3] frames for a fused model: images resized to the source size,
    else uniform random bytes. Boxes are compared in canvas units, or in valid-region units for
    a with-mask model (as ``_image_batches`` does)."""
    Hs, Ws = fused_source_size(meta) or (0, 0)
    if data_dir is not None:
        frames, source = parity_frames(Hs, Ws, data_dir, num_images)
        frames = frames[:num_images]
    else:
        rng = np.random.default_rng(seed)
        frames = list(rng.integers(0, 256, (num_images, Hs, Ws, 3), dtype=np.uint8))
        source = "random frames"
    canvas = np.array([[meta.input_height, meta.input_width]], dtype=np.int64)
    if meta.with_mask:  # boxes relative to the valid region (the mask is in the graph)
        canvas = np.array([target_size(Hs, Ws, meta)[:2]], dtype=np.int64)

    def batches() -> Iterator[tuple[Feed, np.ndarray, int]]:
        for start in range(0, len(frames), batch):
            chunk = np.stack(frames[start:start + batch])
            sizes = np.repeat(canvas, len(chunk), axis=0)
            yield _finish(meta, chunk, np.zeros(chunk.shape[:3], dtype=bool), sizes)

    return source, batches()


def backend_runner(backend: Backend) -> Runner:
    """A runtime backend as a ``feed -> (logits, boxes)`` runner."""
    return lambda feed: backend.infer(feed["images"], feed.get("mask"))


def onnxruntime_runner(onnx_path: str) -> Runner:
    """The runtime's ONNX Runtime backend (CPU provider) on ``onnx_path`` as a runner."""
    return backend_runner(OnnxRuntimeBackend(onnx_path, providers="cpu"))


def golden_check(reference: Runner, candidate: Runner, meta: ModelMeta, precision: str,
                 data_dir: str | None = None, num_images: int = 8, batch: int = 4,
                 seed: int = 0) -> GoldenReport:
    """Run both on the same inputs and compare (``precision``: a TOLERANCES key)."""
    if precision not in TOLERANCES:
        raise InputError("precision", f"no golden tolerance for {precision!r}")
    source, batches = golden_inputs(meta, data_dir, num_images, batch, seed)
    report = GoldenReport(precision, TOLERANCES[precision], source)
    for i, (feed, sizes, n) in enumerate(tqdm(batches, desc="golden check", leave=False,
                                              disable=None)):
        ref = [np.asarray(a)[:n] for a in reference(feed)]
        got = [np.asarray(a)[:n] for a in candidate(feed)]
        report.cases.append(compare_outputs(f"batch {i}", source, ref, got, sizes[:n]))
    return report
