"""Latency measurement: warm-up, N timed runs, median / p90 / p99, images/s.

``time.perf_counter`` around each call; the first ``warmup`` calls (graph
optimisation, allocator growth, lazy kernel selection) are not counted. On
CUDA the caller's function must synchronise before returning, otherwise only
the launch is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from runtime.errors import InputError


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of one call processing ``batch_size`` images (milliseconds)."""

    runs: int  # timed runs (after warm-up)
    warmup: int  # untimed runs before them
    batch_size: int  # images per call
    median_ms: float  # p50
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    @property
    def images_per_s(self) -> float:
        """Throughput at the median latency."""
        return self.batch_size * 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": self.images_per_s}


def stats_from_samples(samples_ms: list[float], *, warmup: int, batch_size: int) -> LatencyStats:
    """Summarise per-run latencies (ms). Percentiles use linear interpolation."""
    if not samples_ms:
        raise InputError("runs", "need at least one timed run")
    arr = np.asarray(samples_ms, dtype=np.float64)
    return LatencyStats(
        runs=len(samples_ms), warmup=warmup, batch_size=batch_size,
        median_ms=float(np.percentile(arr, 50)), p90_ms=float(np.percentile(arr, 90)),
        p99_ms=float(np.percentile(arr, 99)), mean_ms=float(arr.mean()), min_ms=float(arr.min()),
    )


def time_call(fn: Callable[[], Any], *, runs: int, warmup: int = 1,
              batch_size: int = 1) -> LatencyStats:
    """Call ``fn()`` ``warmup`` times untimed, then ``runs`` times timed."""
    if runs < 1:
        raise InputError("runs", f"must be >= 1, got {runs}")
    if warmup < 0:
        raise InputError("warmup", f"must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return stats_from_samples(samples, warmup=warmup, batch_size=batch_size)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, runs: int, warmup: int = 1,
                     batch_size: int = 1) -> dict[str, LatencyStats]:
    """Time several calls round-robin: run i of each call is taken back to back.

    On a shared machine, load from other processes then hits every call alike, so
    the ratios between them (model vs end to end, pre/post share) stay meaningful
    even when the absolute numbers are noisy.
    """
    if runs < 1:
        raise InputError("runs", f"must be >= 1, got {runs}")
    if warmup < 0:
        raise InputError("warmup", f"must be >= 0, got {warmup}")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                samples[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: stats_from_samples(v, warmup=warmup, batch_size=batch_size)
            for name, v in samples.items()}
