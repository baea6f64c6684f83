"""Run summary of a stream: frame counts, throughput, per-stage latency percentiles and,
with ground truth, the tracking metrics (MOTA, IDF1 from ``trackers.eval``, which
reproduces TrackEval's CLEAR and Identity matching)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import atomic_write_text
from runtime.errors import BackendUnavailableError, InputError


@dataclass
class StageTimes:
    """Wall time of each call of one stage (seconds); a batched call holds ``items`` frames."""

    seconds: list[float] = field(default_factory=list)
    items: int = 0

    def add(self, seconds: float, items: int = 1) -> None:
        self.seconds.append(seconds)
        self.items += items

    def percentiles(self) -> dict[str, float]:
        """calls, frames, mean / p50 / p90 / p99 per call in milliseconds."""
        if not self.seconds:
            return {"calls": 0, "frames": 0}
        ms = np.asarray(self.seconds) * 1e3
        return {"calls": len(ms), "frames": self.items, "mean_ms": round(float(ms.mean()), 3),
                **{f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}}


@dataclass
class StreamSummary:
    source: str  # description of the source
    mode: str  # "pipelined" | "sequential"
    frames_decoded: int = 0
    frames_processed: int = 0  # written to the outputs
    frames_dropped: int = 0  # stale frames of a live source skipped by the latest-frame policy
    reconnects: int = 0
    wall_s: float = 0.0  # first frame decoded -> last frame written
    interrupted: str = ""  # "" | "SIGINT" | "SIGTERM" | the error that ended a live stream
    batch_size: int = 1
    video_codec: str = ""  # encoder of the annotated video ("" = none written)
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> percentiles
    tracking: dict[str, float] = field(default_factory=dict)  # MOTA, IDF1... vs ground truth

    @property
    def fps(self) -> float:
        return self.frames_processed / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fps"] = round(self.fps, 3)
        return out

    def format(self) -> str:
        lines = [f"{self.frames_processed} frames in {self.wall_s:.2f} s ({self.fps:.1f} fps, "
                 f"{self.mode}, batch {self.batch_size}); decoded {self.frames_decoded}, "
                 f"dropped {self.frames_dropped}"
                 + (f", reconnects {self.reconnects}" if self.reconnects else "")
                 + (f"; ended early: {self.interrupted}" if self.interrupted else "")]
        for name, p in self.stages.items():
            if p.get("calls"):
                lines.append(f"  {name:<12} p50 {p['p50_ms']:8.2f} ms  p90 {p['p90_ms']:8.2f} ms"
                             f"  p99 {p['p99_ms']:8.2f} ms  ({p['calls']} calls)")
        if self.tracking:
            lines.append("  tracking: " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in self.tracking.items()))
        if self.video_codec:
            lines.append(f"  video codec: {self.video_codec}")
        lines += [f"  {kind}: {path}" for kind, path in self.outputs.items()]
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        self.outputs["summary"] = str(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def evaluate_tracks(gt_path: Path, results_path: Path, iou: float = 0.5) -> dict[str, float]:
    """MOTA, MOTP, IDF1, ID switches... of MOTChallenge ``results_path`` against
    ``gt_path`` (rows with class 1 and conf != 0 are scored, as in TrackEval)."""
    try:
        from trackers.eval import evaluate_mot_sequence
    except ImportError as exc:
        raise BackendUnavailableError("tracking metrics need the 'trackers' package "
                                      "(pip install 'detr-edge[video]')") from exc
    if not gt_path.is_file():
        raise InputError(gt_path, "ground-truth file not found")
    if results_path.stat().st_size == 0:
        # An empty result file is a valid answer (nothing tracked) that the loader rejects.
        return {"MOTA": 0.0, "IDF1": 0.0, "tracks": 0}
    try:
        result = evaluate_mot_sequence(gt_path, results_path, metrics=["CLEAR", "Identity"],
                                       threshold=iou)
    except ValueError as exc:
        raise InputError(gt_path, f"cannot evaluate tracks ({exc})") from exc
    clear, ident = result.CLEAR, result.Identity
    assert clear is not None and ident is not None  # both were asked for
    return {"MOTA": float(clear.MOTA), "MOTP": float(clear.MOTP), "IDF1": float(ident.IDF1),
            "IDSW": int(clear.IDSW), "FP": int(clear.CLR_FP), "FN": int(clear.CLR_FN),
            "gt_ids": int(clear.MT + clear.PT + clear.ML)}
