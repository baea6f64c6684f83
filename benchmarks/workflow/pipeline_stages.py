"""The work of each ``detr-edge pipeline`` stage, and the fingerprints that let a
rerun skip the stages whose inputs did not change (``benchmarks.workflow.pipeline``
orchestrates them).

Every stage reads images through a dataset split folder (``ROOT/<split>``), so
``runtime.dataset.resolve_dataset`` finds the split's annotations and its images
by ``file_name``, sub-folders included: calibration always comes from the train
split, the INT8 AP budget and the benchmark from the val split.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.artifacts import row_precision, tensorrt_unavailable_reason
from runtime import json_limits
from runtime.atomic import atomic_copy, atomic_write_text
from runtime.errors import DetrEdgeError

Log = Callable[[str], None]


class StageCache:
    """Per-stage input fingerprints under ``out/stages``: a stage whose inputs
    (config + SHA-256 of input files) match its stamp and whose outputs exist is
    skipped, so an interrupted pipeline resumes where it stopped."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "stages"

    @staticmethod
    def fingerprint(inputs: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()

    def is_fresh(self, name: str, inputs: dict[str, Any], outputs: list[Path]) -> bool:
        stamp = self.dir / f"{name}.json"
        if not stamp.is_file() or not all(p.exists() for p in outputs):
            return False
        try:
            doc = json_limits.read_json_file(stamp, what="stage file")
            return isinstance(doc, dict) and doc.get("fingerprint") == self.fingerprint(inputs)
        except (OSError, DetrEdgeError):  # unreadable or hostile: redo the stage
            return False

    def mark(self, name: str, inputs: dict[str, Any]) -> None:
        atomic_write_text(self.dir / f"{name}.json", json.dumps(
            {"fingerprint": self.fingerprint(inputs), "inputs": inputs}, default=str, indent=1))


class StageRunner:
    """Runs the pipeline's stages in order: a header, the cache check, the work, the
    stamp, and each stage's wall time and status into ``stage_seconds`` /
    ``stage_status`` (``benchmarks.workflow.pipeline.PipelineResult``'s)."""

    def __init__(self, cache: StageCache, num_stages: int, log: Log) -> None:
        self.cache, self.num_stages, self.log = cache, num_stages, log
        self.seconds: dict[str, float] = {}
        self.status: dict[str, str] = {}

    def header(self, name: str) -> None:
        self.log(f"\n=== [{len(self.seconds) + 1}/{self.num_stages}] {name} ===")

    def done(self, name: str, status: str, seconds: float) -> None:
        self.seconds[name] = seconds
        self.status[name] = status
        self.log(f"--- {name}: {status} in {seconds:.1f} s")

    def stage(self, name: str, inputs: dict[str, Any], outputs: list[Path],
              work: Callable[[], str | None]) -> None:
        """Run ``work`` (returns its status, None = "ran") unless ``inputs`` match the
        stage's stamp and ``outputs`` exist; stamp it when it ran."""
        self.header(name)
        t0 = time.perf_counter()
        if self.cache.is_fresh(name, inputs, outputs):
            status = "reused (inputs unchanged)"
        else:
            try:
                status = work() or "ran"
            except KeyboardInterrupt:
                self.log(f"\ninterrupted during '{name}': run the same command again to "
                         "resume (finished stages are reused)")
                raise
            if status == "ran":
                self.cache.mark(name, inputs)
        self.done(name, status, time.perf_counter() - t0)

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.1f}s ({self.status[k].split(' ')[0]})"
                         for k, v in self.seconds.items())


@dataclass(frozen=True)
class DataPaths:
    """The dataset as the stages use it."""

    root: Path  # dataset root (annotations/ + split folders)
    train_split: str  # calibration (and training) images
    val_split: str  # INT8 AP budget and benchmark images

    @property
    def train_dir(self) -> Path:
        return self.root / self.train_split

    @property
    def val_dir(self) -> Path:
        return self.root / self.val_split


def bind(fn: Callable[..., str], *args: Any) -> Callable[[], str]:
    """``fn`` with its arguments fixed now (a loop variable in a lambda would be late-bound)."""
    return lambda: fn(*args)


def copy_checkpoint(src: Path, dst: Path) -> str:
    atomic_copy(src, dst)
    return "ran"


def export(checkpoint: Path, out: Path, canvas: tuple[int, int], precision: str,
           data: DataPaths, log: Log) -> str:
    from export.onnx_export import ExportConfig, export_onnx

    res = export_onnx(ExportConfig(checkpoint=str(checkpoint), out=str(out), height=canvas[0],
                                   width=canvas[1], precision=precision,
                                   calib_data=str(data.train_dir), calib_images=4))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    fmt = getattr(res.parity, "format", None)
    if callable(fmt):
        log(fmt())
    return "ran"


def quantize(fp32: Path, out: Path, data: DataPaths, calib_images: int, eval_images: int,
             target: str, progress: bool, log: Log) -> str:
    from export.int8.config import QuantizeConfig
    from export.int8.quantize import quantize_int8

    # Calibrate on train images; the INT8 search decides on val images against their
    # annotations (never calibrated on), timing each configuration against FP32.
    _, report = quantize_int8(fp32, str(data.train_dir), QuantizeConfig(
        out_path=str(out), calib_images=calib_images, eval_images=eval_images,
        eval_data=str(data.val_dir) if eval_images else None, latency_runs=20, warmup_runs=2,
        progress=progress, target=target))
    fmt = getattr(report, "format", None)
    if callable(fmt):
        log(fmt())
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return "ran"


def engines(art: Path, data: DataPaths, build: bool, log: Log) -> str:
    reason = tensorrt_unavailable_reason() if build else "disabled (--no-engines)"
    if reason:
        log(f"TensorRT engines skipped: {reason}")
        return f"skipped: {reason}"
    from export.engine_builder import EngineBuildConfig, build_engine
    from export.onnx_meta import load_onnx, read_meta

    for onnx_path in sorted(art.glob("model_*.onnx")):
        if row_precision(read_meta(load_onnx(onnx_path), onnx_path)) == "int8-cpu":
            log(f"no engine for {onnx_path.name}: the cpu Q/DQ format is not a TensorRT input")
            continue
        engine = onnx_path.with_suffix(".engine")
        try:
            build_engine(EngineBuildConfig(onnx_path=str(onnx_path), out_path=str(engine),
                                           calib_data=str(data.train_dir)))
            log(f"wrote {engine}")
        except (DetrEdgeError, RuntimeError) as exc:
            log(f"engine for {onnx_path.name} failed: {exc}")
    return "ran"


@dataclass(frozen=True)
class TrainPlan:
    """How ``--train-minutes`` trains: a fresh model, epoch by epoch, until the time is up."""

    minutes: float
    preset: str  # model preset, e.g. detr-tiny
    rule: tuple[int, int]  # (shorter side, longer-side cap) of the training resize
    batch_size: int
    num_queries: int  # object slots: a few more than the most objects in one image


def train_for(plan: TrainPlan, data: DataPaths, checkpoint: Path, progress: bool,
              log: Log) -> str:
    """Train (resuming epoch by epoch) until ``plan.minutes`` are used; copy the
    last checkpoint to ``checkpoint``."""
    from detr.train.config import TrainConfig
    from detr.train.loop import train

    run_dir = checkpoint.parent / "train"
    deadline = time.perf_counter() + plan.minutes * 60
    epoch = 0
    while True:
        epoch += 1
        t0 = time.perf_counter()
        last = train(TrainConfig(
            data=str(data.root), train_split=data.train_split, val_split=data.val_split,
            out=str(run_dir), preset=plan.preset, epochs=epoch, resume=epoch > 1,
            batch_size=plan.batch_size, lr=2e-4, lr_backbone=2e-4, scales=(plan.rule[0],),
            max_size=plan.rule[1], crop=False, num_workers=0, eval_every=0, progress=progress,
            model_overrides={"num_queries": plan.num_queries, "dropout": 0.0}))
        took = time.perf_counter() - t0
        log(f"epoch {epoch} done in {took:.0f} s")
        if time.perf_counter() + took > deadline:
            break
    atomic_copy(last.checkpoint, checkpoint)
    return "ran"
