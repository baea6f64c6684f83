"""Latency measurement: warm-up, N timed runs, median / p90 / p99, images/s.

``time.perf_counter`` around each call; the first ``warmup`` calls (graph
optimisation, allocator growth, lazy kernel selection) are not counted. On
CUDA the caller's function must synchronise before returning, otherwise only
the launch is timed.

Several ONNX models against each other (INT8 vs FP32: the quantizer's decision
and the benchmark's INT8 section) are timed by :func:`time_onnx_models` only.
Run-by-run round-robin between two ONNX Runtime sessions has a trap: the
sessions' intra-op worker threads spin between runs (ORT's default
``allow_spinning``), and on a 2-core machine each run then shares its cores
with the other session's threads. Measured on the demo model (2 threads, 12
paired rounds, 3 runs on a loaded machine): FP32 right after an INT8 run took
1.43-1.44x its back-to-back time, INT8 after FP32 1.15-1.18x, so the INT8/FP32
ratio came out ~0.8x of the one a model running alone shows; with spinning off
the penalty vanished (0.96x / 1.1x, within noise), and one untimed run of the
same model before the timed one did not remove it. So models are timed in
blocks: ``settle`` untimed runs, then ``block`` timed runs of one model, then
the next model; blocks alternate, so load drift still hits both alike, and the
sessions keep the runtime backend's options (spinning: ORT's default, off on
machines with <= 2 CPUs, ``runtime.ort_spinning``), as deployed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from runtime.errors import InputError

T = TypeVar("T")  # what one timed call returns


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


def round_robin(calls: dict[str, Callable[[], T]], *, runs: int, warmup: int = 1,
                settle: int = 0, block: int = 1, pause_s: float = 0.0) -> dict[str, list[T]]:
    """The one timing loop: ``warmup`` untimed rounds of every call, then rounds in
    which each call in turn runs ``settle`` times unrecorded and ``block`` times
    recorded, until each has ``runs`` recorded results; ``pause_s`` of sleep before
    each call's turn (lets another process's spinning threads go idle).

    Returns each call's recorded return values, in order. On a shared machine, load
    from other processes then hits every call alike, so ratios between them stay
    meaningful even when the absolute numbers are noisy (module doc).
    """
    if runs < 1 or block < 1:
        raise InputError("runs", f"runs and block must be >= 1, got {runs}, {block}")
    if warmup < 0 or settle < 0:
        raise InputError("warmup", f"warmup and settle must be >= 0, got {warmup}, {settle}")
    for _ in range(warmup):
        for call in calls.values():
            _pause(pause_s)
            call()
    recorded: dict[str, list[T]] = {name: [] for name in calls}
    while len(next(iter(recorded.values()))) < runs:
        for name, call in calls.items():
            _pause(pause_s)
            for _ in range(settle):
                call()
            for _ in range(min(block, runs - len(recorded[name]))):
                recorded[name].append(call())
    return recorded


def _pause(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _timed_ms(fn: Callable[[], Any]) -> Callable[[], float]:
    """``fn`` as a call returning its own wall time in milliseconds."""
    def call() -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000.0
    return call


def time_call(fn: Callable[[], Any], *, runs: int, warmup: int = 1,
              batch_size: int = 1) -> LatencyStats:
    """Call ``fn()`` ``warmup`` times untimed, then ``runs`` times timed."""
    return time_interleaved({"call": fn}, runs=runs, warmup=warmup,
                            batch_size=batch_size)["call"]


def time_interleaved(fns: dict[str, Callable[[], Any]], *, runs: int, warmup: int = 1,
                     batch_size: int = 1, settle: int = 0,
                     block: int = 1) -> dict[str, LatencyStats]:
    """Time several calls round-robin (:func:`round_robin`): each round runs every call
    in turn, ``settle`` untimed then ``block`` timed calls of it back to back, until
    ``runs`` timed. ``settle`` / ``block`` > 1: each call is timed as it runs alone,
    not right after another one (see module doc)."""
    samples = round_robin({name: _timed_ms(fn) for name, fn in fns.items()}, runs=runs,
                          warmup=warmup, settle=settle, block=block)
    return {name: stats_from_samples(v, warmup=warmup, batch_size=batch_size)
            for name, v in samples.items()}


def onnx_cpu_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with the runtime backend's own session options
    (``runtime.backends.onnxruntime_backend.session_options``: full graph
    optimisation, spinning as ``runtime.ort_spinning.default_spinning``, ``threads``
    intra-op threads or ORT's default), as a deployment runs it."""
    import onnxruntime as ort

    from runtime.backends.onnxruntime_backend import session_options

    options = session_options(ort, threads, exact_int8=False, spinning=None)
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def session_call(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    """``session.run(None, feed)`` as a call taking no arguments (for the timing loops)."""
    return lambda: session.run(None, feed)


def time_onnx_models(paths: dict[str, str | os.PathLike[str]], feed: dict[str, np.ndarray], *,
                     runs: int, warmup: int = 3, threads: int | None = None,
                     settle: int = 2, block: int = 4) -> dict[str, LatencyStats]:
    """Model-alone latency of ONNX models on ONNX Runtime CPU, round-robin in
    blocks: ``settle`` untimed then ``block`` timed calls of one model, then the
    next (module doc); ``feed`` is one preprocessed input, e.g.
    ``{'images': float32 [B,3,H,W], 'mask': bool [B,H,W]}``."""
    sessions = {name: onnx_cpu_session(p, threads) for name, p in paths.items()}
    batch = int(next(iter(feed.values())).shape[0])
    return time_interleaved({k: session_call(s, feed) for k, s in sessions.items()},
                            runs=runs, warmup=warmup, batch_size=batch, settle=settle,
                            block=block)
