"""Parity of an exported ONNX model against the PyTorch model it came from.

Both run the SAME preprocessed tensors (``runtime.preprocess`` output, or random
normalised inputs when no images are given). The comparison itself (max/mean
absolute error per output, detections matched at IoU 0.9) is
``runtime.compare``, shared with the golden check after ``build-engine`` and
the benchmark's parity columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from export.int8.calib_data import list_images
from runtime.compare import MATCH_IOU, OutputComparison, compare_outputs, comparison_sizes
from runtime.image_io import load_image
from runtime.preprocess import preprocess

FP32_TOLERANCE = 1e-4  # max abs error accepted on logits and boxes for FP32 graphs


@dataclass
class ParityReport:
    precision: str
    tolerance: float | None  # max abs error allowed (None = report only)
    cases: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if self.tolerance is None:
            return True
        return all(v <= self.tolerance for c in self.cases for v in c.max_abs.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        for case, raw in zip(self.cases, out["cases"]):
            raw["matched_fraction"] = case.matched_fraction
        return out

    def format(self) -> str:
        tol = "report only" if self.tolerance is None else f"tolerance {self.tolerance:g}"
        lines = [f"parity vs PyTorch ({self.precision}, {tol}): "
                 + ("PASS" if self.passed else "FAIL")]
        for c in self.cases:
            errs = ", ".join(f"{k} max {c.max_abs[k]:.3g} mean {c.mean_abs[k]:.3g}"
                             for k in c.max_abs)
            n = max(c.detections_ref, c.detections_got)
            # "0/0 agree (100%)" read as a success for a model that detects nothing
            # (e.g. NaN outputs); say so instead.
            agree = (f"detections {c.detections_matched}/{n} matched at IoU {MATCH_IOU} "
                     f"({c.matched_fraction:.1%})" if n and c.matched_fraction is not None
                     else "no detections on either side (nothing to compare)")
            lines.append(f"  {c.name} [{c.source}]: {errs}; {agree}")
        return "\n".join(lines)


def parity_report(torch_forward: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]],
                  onnx_model: Any, cases: Sequence[tuple[str, str, dict[str, np.ndarray],
                                                         np.ndarray]],
                  precision: str = "fp32", tolerance: float | None = FP32_TOLERANCE,
                  ) -> ParityReport:
    """Run every case ``(name, source, feed, target_sizes [B,2])`` through the ONNX
    model (ONNX Runtime CPU, ``onnx_model`` a ModelProto or path) and through
    ``torch_forward(feed) -> (logits, boxes)``; collect the errors."""
    import onnxruntime as ort

    data = onnx_model if isinstance(onnx_model, str) else onnx_model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    report = ParityReport(precision=precision, tolerance=tolerance)
    for name, source, feed, target_sizes in tqdm(cases, desc=f"parity {precision}", leave=False,
                                                 disable=None):
        got = session.run(["logits", "boxes"], feed)
        ref = torch_forward(feed)
        report.cases.append(compare_outputs(name, source, ref, got, target_sizes))
    return report


Case = tuple[str, str, dict[str, np.ndarray], np.ndarray]  # name, source, feed, target_sizes


def torch_forward(model: Any, with_mask: bool) -> Callable[[dict[str, np.ndarray]],
                                                           tuple[np.ndarray, np.ndarray]]:
    """The PyTorch reference: the full model (not the export wrapper) on the same
    tensors (``detr.torch_forward.forward_numpy``), with the mask for a mask graph."""
    from detr.torch_forward import forward_numpy

    def forward(feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return forward_numpy(model, feed["images"], feed["mask"] if with_mask else None)

    return forward


def _batch_sizes(meta: Any) -> list[int]:
    # Dynamic graphs are checked at a batch other than the traced one (2): 1 and 4.
    return [1, 4] if meta.batch_size is None else [meta.batch_size]


def build_cases(meta: Any, data_dir: str | None, num_images: int, seed: int = 0) -> list[Case]:
    """Parity/calibration cases for a model described by ``meta``: one per batch size
    (``_batch_sizes``), from real images (``data_dir``) or random inputs."""
    if data_dir is not None:
        return _image_cases(meta, data_dir, num_images)
    return _random_cases(meta, np.random.default_rng(seed))


def _case_name(meta: Any, bs: int) -> str:
    if meta.with_mask:
        return f"mask, padded batch {bs}"
    return f"batch {bs}" + (" (dynamic)" if meta.batch_size is None else "")


def _image_cases(meta: Any, data_dir: str, num_images: int) -> list[Case]:
    """Real images through ``runtime.preprocess``; for a mask graph every other image is
    cropped to half its width first, so the batch really mixes sizes and is padded."""
    paths = list_images(data_dir, num_images)
    cases: list[Case] = []
    cursor = 0
    for bs in _batch_sizes(meta):
        picks = [paths[(cursor + i) % len(paths)] for i in range(bs)]
        cursor += bs
        sources: list[Any] = list(picks)
        if meta.with_mask:
            sources = []
            for i, p in enumerate(picks):
                img = load_image(p)
                if i % 2 == (1 if bs > 1 else 0):
                    img = img.crop((0, 0, max(img.width // 2, 1), img.height))
                sources.append(img)
        batch = preprocess(sources, meta)
        feed = {"images": batch.images}
        if meta.with_mask:
            feed["mask"] = batch.mask
        cases.append((_case_name(meta, bs), f"images from {data_dir}", feed,
                      comparison_sizes(batch, meta)))
    return cases


def _random_cases(meta: Any, rng: np.random.Generator) -> list[Case]:
    """Random N(0, 1) inputs; for a mask graph zeroed + masked right/bottom padding of a
    different valid size per image (multiples of 8 down to half the canvas)."""
    H, W = meta.input_height, meta.input_width  # canvas
    cases: list[Case] = []
    for bs in _batch_sizes(meta):
        images = rng.standard_normal((bs, 3, H, W), dtype=np.float32)
        feed = {"images": images}
        sizes = np.repeat(np.array([[H, W]], dtype=np.int64), bs, axis=0)
        if meta.with_mask:
            mask = np.zeros((bs, H, W), dtype=bool)
            for i in range(bs):
                h = H - 8 * int(rng.integers(0, H // 16 + 1))
                w = W - 8 * int(rng.integers(0, W // 16 + 1))
                if i == 0:
                    w = W // 2  # at least one clearly padded image
                mask[i, h:, :] = True
                mask[i, :, w:] = True
                images[i][:, mask[i]] = 0.0
                sizes[i] = (h, w)
            feed["mask"] = mask
        cases.append((_case_name(meta, bs), "random normalised", feed, sizes))
    return cases
