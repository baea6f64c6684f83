"""Video and camera streams through an exported DETR: sources, a pipelined runner,
outputs (JSON Lines, annotated video, MOTChallenge tracks, summary) and tracking.

numpy + pillow + PyAV (the ``video`` extra); ByteTrack and the tracking metrics
come from the ``trackers`` package. Never imports torch. Heavy packages are
imported inside the functions that need them, so ``import runtime.stream`` works
on a runtime-only install and a missing extra is a one-line error naming it.

    from runtime.stream import StreamConfig, run_stream
    summary = run_stream(StreamConfig(model="m.onnx", source="clip.mp4", out_dir="out"))
"""

from __future__ import annotations

from runtime.lazy import lazy_getattr

__all__ = ["StreamConfig", "StreamSummary", "run_stream"]

_EXPORTS = {
    "StreamConfig": "runtime.stream.config",
    "run_stream": "runtime.stream.pipeline",
    "StreamSummary": "runtime.stream.summary",
}

__getattr__ = lazy_getattr(__name__, _EXPORTS)
