"""One benchmark row per backend x precision, with an explicit status.

Like Ultralytics' benchmark table, no row is silently missing: every
backend x precision the suite knows about appears with one of three statuses
and, unless ``ok``, the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "export ok but evaluation failed", "skipped"]
STATUS_OK: Status = "ok"
STATUS_EVAL_FAILED: Status = "export ok but evaluation failed"
STATUS_SKIPPED: Status = "skipped"

# The full row set: (backend, precision, device). Order = report order.
ROW_KEYS: tuple[tuple[str, str, str], ...] = (
    ("pytorch", "fp32", "cpu"),
    ("pytorch", "fp16", "cuda"),
    ("onnxruntime", "fp32", "cpu"),
    ("onnxruntime", "fp16", "cpu"),
    ("onnxruntime", "int8", "cpu"),
    ("onnxruntime", "int8-cpu", "cpu"),  # ONNX Runtime's uint8 Q/DQ format (quantize --target cpu)
    ("tensorrt", "fp32", "cuda"),
    ("tensorrt", "fp16", "cuda"),
    ("tensorrt", "int8", "cuda"),
)

@dataclass
class SpeedResult:
    """Latency at one batch size, all in milliseconds per call (``batch_size`` images).

    model: the backend call alone on an already preprocessed batch.
    end_to_end: preprocess (load, resize, normalise) + model + decode.
    pre_ms / post_ms: median preprocess and decode cost of one call.
    """

    batch_size: int
    model: dict[str, Any] | None = None  # LatencyStats.to_dict()
    end_to_end: dict[str, Any] | None = None
    pre_ms: float | None = None
    post_ms: float | None = None
    skipped_reason: str | None = None  # e.g. "graph exported with fixed batch 1"

    @property
    def pre_post_fraction(self) -> float | None:
        """(pre + post) / end-to-end median: how much the runtime adds around the model."""
        if self.end_to_end is None or self.pre_ms is None or self.post_ms is None:
            return None
        return (self.pre_ms + self.post_ms) / self.end_to_end["median_ms"]


@dataclass
class Row:
    """Everything measured for one backend x precision."""

    backend: str  # "pytorch" | "onnxruntime" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "int8" | "int8-cpu" (uint8 Q/DQ, not a TensorRT input)
    device: str  # "cpu" | "cuda"
    status: Status = STATUS_SKIPPED
    reason: str = ""  # why skipped / what failed; empty when ok
    artifact: str | None = None  # path of the model file both accuracy and speed used
    artifact_bytes: int | None = None
    # detr.coco_eval.AP_KEYS -> value in [0, 1] (COCO, -1 = no GT)
    accuracy: dict[str, float] | None = None
    # AP_KEYS -> row - the model as trained (PyTorch FP32, official protocol, original
    # images; Report.reference): everything deployment costs, canvas and precision.
    delta_vs_trained: dict[str, float] | None = None
    # AP_KEYS -> row - PyTorch FP32 on the same canvas and input form (mask or not) as
    # the artifacts: the precision/runtime loss alone.
    delta_vs_canvas: dict[str, float] | None = None
    parity: dict[str, float | None] | None = None  # see benchmarks.accuracy.parity_metrics
    speed: list[SpeedResult] = field(default_factory=list)
    peak_rss_mb: float | None = None  # see Report.memory_method
    eval_images: int = 0

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision.upper()} ({self.device})"

    def skip(self, reason: str) -> Row:
        self.status, self.reason = STATUS_SKIPPED, reason
        return self

    def speed_at(self, batch_size: int) -> SpeedResult | None:
        return next((s for s in self.speed if s.batch_size == batch_size), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = self.name
        for s, sd in zip(self.speed, d["speed"]):
            sd["pre_post_fraction"] = s.pre_post_fraction
        return d


def all_rows() -> list[Row]:
    """A fresh row for every known backend x precision, all 'skipped' until run."""
    return [Row(backend=b, precision=p, device=d, reason="not run") for b, p, d in ROW_KEYS]
