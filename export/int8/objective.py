"""What the INT8 search optimises: AP on held-out images, its noise, and speed.

Every configuration the search tries (calibration method per block, blocks kept
in FP32) is *measured*, never guessed:

- **AP** on the held-out images with ``export.int8.sensitivity.HeldOutEvaluator``,
  in COCO points. The per-image matches are kept (``detr.coco_resample``), so the
  difference between any two configurations gets a paired bootstrap standard
  error over images (``export.int8.paired_bootstrap``): the search only takes a step
  whose gain is beyond noise, and the report states the noise of its result.
- **Latency** on ONNX Runtime CPU, the target format itself (a cpu-format model
  is timed as ORT runs it). FP32 and the configuration are timed round-robin
  (``benchmarks.timing.time_onnx_models``, which the benchmark's INT8 section
  uses too), so load from other processes hits both alike and the *ratio*
  stays meaningful on a shared machine even when milliseconds do not.

Metric. With annotations the AP is real COCO AP and the budget is in real AP
points. Without them the ground truth is the FP32 model's own top detections
("pseudo ground truth"): FP32 scores 100 by construction, and INT8 loses far
more points on that scale than in real AP, with a floor: configurations that
lose no real AP still lose ~14-16 pseudo points (the low-score slots among the
top 10 per image reorder under any quantization noise). So the pseudo budget is
an affine map of the real one, :func:`pseudo_budget`, fitted in
``benchmarks/int8_pseudo_gt.py`` (README, INT8 section).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import time_onnx_models
from detr.coco_resample import weighted_ap
from export.int8.paired_bootstrap import PairedDifference, paired_bootstrap
from export.int8.sensitivity import HeldOutEvaluator

# Builds one configuration: (blocks kept FP32, calibration method per block) -> model.
Build = Callable[[list[str], dict[str, str]], Path]

# Pseudo-GT AP drop = OFFSET + SLOPE x real AP drop: least squares over the 8 INT8
# configurations of benchmarks/int8_pseudo_gt.py on the demo model's 200 val images (both
# formats; min-max, entropy, percentile 99.9 / 99.0, 2 calibration images): real drops
# -0.12..2.93, pseudo drops 13.6..55.0, rms residual 4.5 pseudo points.
PSEUDO_GT_OFFSET = 14.8
PSEUDO_GT_SLOPE = 13.6
NOISE_Z = 2.0  # a step's AP gain counts only beyond NOISE_Z bootstrap standard errors
PAYS_RATIO = 0.9  # INT8 "pays" only when it runs in at most this fraction of FP32's time
BOOTSTRAP_REPLICATES = 200  # paired resamples per standard error (SE of SE ~ 5%)


@dataclass
class Candidate:
    """One measured configuration (a point of the AP / latency frontier)."""

    name: str  # e.g. "full INT8 (minmax)", "+ FP32 decoder.layers.2"
    fallback: list[str]  # blocks kept in FP32
    methods: dict[str, str]  # calibration method of each block that differs from the default
    ap: float  # COCO points 0..100 on the held-out images
    dap: float  # ap - FP32 ap (negative = INT8 loses)
    dap_se: float  # paired bootstrap SE of dap over the held-out images
    latency_ms: float  # ORT CPU median, batch 1
    fp32_latency_ms: float  # FP32 median from the same interleaved run
    quantized_nodes: int = 0  # Conv/MatMul/Gemm in INT8
    chosen: bool = False  # the configuration written

    @property
    def ratio(self) -> float:
        """INT8 / FP32 latency from one interleaved run (< 1 = INT8 faster)."""
        return self.latency_ms / self.fp32_latency_ms if self.fp32_latency_ms > 0 else np.nan


@dataclass
class Objective:
    """Measures configurations against FP32 (see module doc)."""

    evaluator: HeldOutEvaluator  # AP on the held-out images
    fp32_path: Path
    feed: dict[str, np.ndarray]  # one batch-1 (or fixed-batch) input for timing
    latency_runs: int = 20
    warmup_runs: int = 3
    threads: int | None = None
    seed: int = 0
    fp32_ap: float = 0.0
    _matches: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._matches["fp32"] = self.evaluator.matches(self.fp32_path)
        self.fp32_ap = self._ap("fp32")

    def _ap(self, key: str) -> float:
        matches = self._matches[key]
        return float(weighted_ap(matches, np.ones((1, matches.num_images)))[0])

    def paired(self, a: str, b: str) -> PairedDifference:
        """AP(a) - AP(b) with its paired bootstrap SE; keys are candidate names or "fp32"."""
        ma, mb = self._matches[a], self._matches[b]
        return paired_bootstrap(lambda w: weighted_ap(ma, w), lambda w: weighted_ap(mb, w),
                                ma.num_images, BOOTSTRAP_REPLICATES, self.seed)

    def measure(self, name: str, path: Path, fallback: list[str],
                methods: dict[str, str]) -> Candidate:
        """AP, paired dAP +- SE against FP32, and interleaved latency of ``path``."""
        self._matches[name] = self.evaluator.matches(path)
        diff = self.paired(name, "fp32")
        fp32_ms, ms = self.latency(path)
        return Candidate(name=name, fallback=list(fallback), methods=dict(methods),
                         ap=self._ap(name), dap=diff.diff, dap_se=diff.se, latency_ms=ms,
                         fp32_latency_ms=fp32_ms)

    def latency(self, path: str | os.PathLike[str]) -> tuple[float, float]:
        """(FP32 ms, model ms) of :func:`interleaved_latency`."""
        return interleaved_latency(self.fp32_path, path, self.feed, self.latency_runs,
                                   self.warmup_runs, self.threads)


def interleaved_latency(fp32_path: str | os.PathLike[str], path: str | os.PathLike[str],
                        feed: dict[str, np.ndarray], runs: int, warmup: int,
                        threads: int | None) -> tuple[float, float]:
    """(FP32 ms, model ms): medians of ``benchmarks.timing.time_onnx_models`` (the
    benchmark's INT8 timing too); NaN when ``runs`` is 0."""
    if not runs:
        return float("nan"), float("nan")
    stats = time_onnx_models({"fp32": fp32_path, "model": path}, feed, runs=runs,
                             warmup=warmup, threads=threads)
    return stats["fp32"].median_ms, stats["model"].median_ms


def pseudo_budget(real_budget: float) -> float:
    """The pseudo-GT AP drop that corresponds to a real AP drop of ``real_budget``."""
    return PSEUDO_GT_OFFSET + PSEUDO_GT_SLOPE * real_budget


def within(candidate: Candidate, budget: float) -> bool:
    """The AP drop (point estimate) is within the budget."""
    return -candidate.dap <= budget + 1e-9


def pays(candidate: Candidate) -> bool:
    """INT8 is faster than FP32 by the margin :data:`PAYS_RATIO` (True when not timed)."""
    return bool(np.isnan(candidate.ratio) or candidate.ratio <= PAYS_RATIO)
