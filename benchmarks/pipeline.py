"""``detr-edge pipeline``: the main job, one command from data to benchmark report.

Stages (each prints a header and its wall time):
1. dataset   - synthetic shapes (``detr.data.synthetic``), the demo model's recipe;
2. model     - the committed demo checkpoint, or ``train_minutes`` of ``detr.train``;
3. onnx-fp32 - ``export.onnx_export`` (parity-checked against PyTorch);
4. onnx-fp16 - the same exporter with ``precision='fp16'``;
5. int8      - ``export.quantize`` (explicit Q/DQ within an AP budget), in TensorRT's
               format and (int8-cpu) in ONNX Runtime's uint8 CPU format;
6. engines   - ``export.engine_builder`` when TensorRT and a GPU are present;
7. benchmark - ``benchmarks.suite.run_benchmark`` over everything above.

Resuming: every stage records a fingerprint of its inputs (config + SHA-256 of
input files) in ``out/stages/<name>.json``; when the fingerprint matches and the
outputs exist, the stage is skipped. An interrupted pipeline therefore resumes
where it stopped, and a changed checkpoint re-runs everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime import json_limits
from runtime.atomic import atomic_write_text
from runtime.errors import DetrEdgeError, InputError

# The committed demo model (trained by detr/assets/README.md's recipe).
DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "detr" / "assets" / "detr-tiny-shapes.pth"


# dataset, model, onnx-fp32, onnx-fp16, int8, int8-cpu, engines, benchmark
NUM_STAGES = 8


@dataclass(frozen=True)
class PipelineConfig:
    """The main job's settings; defaults finish in well under 15 min on 2 CPU cores."""

    out: str = "runs/demo"  # everything goes here: data/, model/, artifacts/, report/
    train_minutes: float = 0.0  # 0 = start from the committed demo checkpoint
    checkpoint: str | None = None  # start from this checkpoint instead of the demo one
    max_images: int = 200  # eval images per benchmark row: all 200 val images (~1 min a row)
    runs: int = 20  # timed runs per latency measurement (detr-tiny at 192 px: ~0.1 s each)
    warmup: int = 2  # untimed runs before them
    batch_sizes: tuple[int, ...] = (1,)  # throughput batch sizes (the ONNX graphs are batch 1)
    image_size: int = 192  # dataset image side (the model input comes from the checkpoint)
    num_train: int = 2000  # training images (generated only when training)
    num_val: int = 200  # validation images
    max_objects: int = 4  # objects per image (the demo model's dataset, detr/assets/README.md)
    size_band_probs: tuple[float, float, float] = (0.0, 0.6, 0.4)  # small/medium/large: demo's
    max_large: int = 1  # at most one large shape per image (demo's dataset)
    seed: int = 0  # dataset seed
    calib_images: int = 32  # INT8 calibration images (from the train split, never val)
    quant_eval_images: int = 16  # held-out train images the quantizer's AP budget check uses
    build_engines: bool = True  # try TensorRT engines (skipped rows without TensorRT/GPU)
    measure_memory: bool = True  # per-row peak-RSS subprocess in the benchmark
    progress: bool = True  # tqdm bars

    def validate(self) -> None:
        if self.train_minutes < 0:
            raise InputError("--train-minutes", f"must be >= 0, got {self.train_minutes}")
        if self.max_images < 1:
            raise InputError("--max-images", f"must be >= 1, got {self.max_images}")
        if self.image_size % 32:
            raise InputError("image_size", f"{self.image_size} must be a multiple of 32 "
                             "(the exported canvas follows the backbone stride)")


@dataclass
class PipelineResult:
    """Where everything is, and how long each stage took (seconds)."""

    out: Path
    checkpoint: Path
    artifacts: Path
    report_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_status: dict[str, str] = field(default_factory=dict)  # ran | reused | skipped: why
    report: Any = None  # benchmarks.report.Report


def file_digest(path: Path) -> str:
    """SHA-256 of a file (1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class StageCache:
    """Per-stage input fingerprints under ``out/stages`` (see module docstring)."""

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


def run_pipeline(config: PipelineConfig, log: Callable[[str], None] = print) -> PipelineResult:
    """Run (or resume) the main job; returns the result with the benchmark report."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out)
    result = PipelineResult(out=out, checkpoint=out / "model" / "checkpoint.pth",
                            artifacts=out / "artifacts", report_dir=out / "report")
    data = out / "data"
    total0 = time.perf_counter()

    def stage(name: str, inputs: dict[str, Any], outputs: list[Path],
              work: Callable[[], str | None]) -> None:
        log(f"\n=== [{len(result.stage_seconds) + 1}/{NUM_STAGES}] {name} ===")
        t0 = time.perf_counter()
        if cache.is_fresh(name, inputs, outputs):
            status = "reused (inputs unchanged)"
        else:
            try:
                status = work() or "ran"
            except KeyboardInterrupt:
                log(f"\ninterrupted during '{name}': run the same command again to resume "
                    "(finished stages are reused)")
                raise
            if status == "ran":
                cache.mark(name, inputs)
        result.stage_seconds[name] = time.perf_counter() - t0
        result.stage_status[name] = status
        log(f"--- {name}: {status} in {result.stage_seconds[name]:.1f} s")

    # 1. dataset ---------------------------------------------------------------------------
    from detr.data.synthetic import ShapesConfig, make_shapes_dataset

    # Without training, the train split only feeds INT8 calibration and its held-out check.
    num_train = (config.num_train if config.train_minutes > 0
                 else config.calib_images + config.quant_eval_images)
    shapes = ShapesConfig(seed=config.seed, num_train=num_train, num_val=config.num_val,
                          image_size=config.image_size, max_objects=config.max_objects,
                          size_band_probs=config.size_band_probs, max_large=config.max_large)
    stage("dataset", {"shapes": asdict(shapes)},
          [data / "annotations" / "instances_val.json", data / "annotations" / "instances_train.json"],
          lambda: _quiet(make_shapes_dataset(data, shapes)))

    # 2. model -----------------------------------------------------------------------------
    source = Path(config.checkpoint) if config.checkpoint else DEMO_CHECKPOINT
    if config.train_minutes > 0:
        model_inputs: dict[str, Any] = {"train_minutes": config.train_minutes,
                                        "dataset": asdict(shapes)}
        stage("model", model_inputs, [result.checkpoint],
              lambda: _train_for(config, data, result.checkpoint, log))
    else:
        if not source.is_file():
            raise InputError(source, "checkpoint not found (train one with --train-minutes M)")
        stage("model", {"checkpoint": file_digest(source)}, [result.checkpoint],
              lambda: _copy(source, result.checkpoint))
    ckpt_digest = file_digest(result.checkpoint)
    # Export and benchmark at the canvas the model was trained for (the demo model saw the
    # 192 px images resized to 128): a larger canvas would show it objects at other sizes.
    size = trained_input_size(result.checkpoint, default=config.image_size)
    log(f"model input: {size}x{size}")
    art = result.artifacts

    # 3.-4. ONNX FP32 / FP16 ----------------------------------------------------------------
    for precision in ("fp32", "fp16"):
        onnx_path = art / f"model_{precision}.onnx"
        stage(f"onnx-{precision}", {"checkpoint": ckpt_digest, "size": size},
              [onnx_path], _bind(_export, result.checkpoint, onnx_path, size, precision, data, log))
    fp32_onnx = art / "model_fp32.onnx"

    # 5. INT8 -------------------------------------------------------------------------------
    for target, name in (("tensorrt", "int8"), ("cpu", "int8-cpu")):
        int8 = art / f"model_{name.replace('-', '_')}.onnx"
        stage(name, {"onnx": file_digest(fp32_onnx), "calib_images": config.calib_images,
                     "eval_images": config.quant_eval_images, "target": target,
                     "dataset": asdict(shapes)}, [int8],
              _bind(_quantize, fp32_onnx, int8, data, config, log, target))

    # 6. TensorRT engines -------------------------------------------------------------------
    stage("engines", {"onnx": [file_digest(p) for p in sorted(art.glob("*.onnx"))]},
          sorted(art.glob("*.engine")) or [art / "model_fp32.engine"],
          lambda: _engines(art, data, config, log))

    # 7. benchmark --------------------------------------------------------------------------
    from benchmarks.suite import BenchmarkConfig, run_benchmark

    bench = BenchmarkConfig(checkpoint=str(result.checkpoint), data=str(data),
                            artifacts=str(art), height=size, width=size,
                            batch_sizes=config.batch_sizes, runs=config.runs,
                            warmup=config.warmup, max_images=config.max_images,
                            out=str(result.report_dir), measure_memory=config.measure_memory,
                            progress=config.progress)

    def _bench() -> str:
        result.report = run_benchmark(bench, log=log)
        return "ran"

    log(f"\n=== [{NUM_STAGES}/{NUM_STAGES}] benchmark ===")
    t0 = time.perf_counter()
    _bench()  # always re-measured: timings are the point of the run
    result.stage_seconds["benchmark"] = time.perf_counter() - t0
    result.stage_status["benchmark"] = "ran"
    log(f"--- benchmark: ran in {result.stage_seconds['benchmark']:.1f} s")

    log("\nstage times: " + ", ".join(f"{k} {v:.1f}s ({result.stage_status[k].split(' ')[0]})"
                                      for k, v in result.stage_seconds.items())
        + f"; total {time.perf_counter() - total0:.1f} s")
    log(f"report: {result.report_dir / 'report.md'} (also report.json, plot.png)")
    return result


def trained_input_size(checkpoint: Path, default: int) -> int:
    """Square input side for a checkpoint: what ``detr-edge eval`` uses for it (its
    ``train_config`` eval size, else its largest training scale), rounded up to the
    backbone stride 32; ``default`` for checkpoints without a training record
    (official / Hugging Face weights)."""
    import detr

    train_config = detr.load_checkpoint(checkpoint).raw.get("train_config")
    if not isinstance(train_config, dict):
        return default
    size = train_config.get("eval_size") or max(train_config.get("scales") or [0])
    if not isinstance(size, int) or size <= 0:
        return default
    return -(-size // 32) * 32


def _bind(fn: Callable[..., str], *args: Any) -> Callable[[], str]:
    """``fn`` with its arguments fixed now (a loop variable in a lambda would be late-bound)."""
    return lambda: fn(*args)


def _quiet(_: Any) -> str:
    return "ran"


def _copy(src: Path, dst: Path) -> str:
    from runtime.atomic import atomic_write_bytes

    atomic_write_bytes(dst, src.read_bytes())
    return "ran"


def _export(checkpoint: Path, out: Path, size: int, precision: str, data: Path,
            log: Callable[[str], None]) -> str:
    from export.onnx_export import ExportConfig, export_onnx

    res = export_onnx(ExportConfig(checkpoint=str(checkpoint), out=str(out), height=size,
                                   width=size, precision=precision,
                                   calib_data=str(data / "train"), calib_images=4))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    fmt = getattr(res.parity, "format", None)
    if callable(fmt):
        log(fmt())
    return "ran"


def _quantize(fp32: Path, out: Path, data: Path, config: PipelineConfig,
              log: Callable[[str], None], target: str) -> str:
    from export.quantize import QuantizeConfig, quantize_int8

    # Calibrate (and pick the Q/DQ fallback) on train images; the benchmark evaluates val.
    _, report = quantize_int8(fp32, str(data / "train"), QuantizeConfig(
        out_path=str(out), calib_images=config.calib_images, eval_images=config.quant_eval_images,
        latency_runs=3, warmup_runs=1, progress=config.progress, target=target))
    fmt = getattr(report, "format", None)
    if callable(fmt):
        log(fmt())
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return "ran"


def _engines(art: Path, data: Path, config: PipelineConfig, log: Callable[[str], None]) -> str:
    from benchmarks.artifacts import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason() if config.build_engines else "disabled (--no-engines)"
    if reason:
        log(f"TensorRT engines skipped: {reason}")
        return f"skipped: {reason}"
    from benchmarks.artifacts import row_precision
    from export.engine_builder import EngineBuildConfig, build_engine
    from export.onnx_meta import load_onnx, read_meta

    for onnx_path in sorted(art.glob("model_*.onnx")):
        if row_precision(read_meta(load_onnx(onnx_path), onnx_path)) == "int8-cpu":
            log(f"no engine for {onnx_path.name}: the cpu Q/DQ format is not a TensorRT input")
            continue
        engine = onnx_path.with_suffix(".engine")
        try:
            build_engine(EngineBuildConfig(onnx_path=str(onnx_path), out_path=str(engine),
                                           calib_data=str(data / "train")))
            log(f"wrote {engine}")
        except (DetrEdgeError, RuntimeError) as exc:
            log(f"engine for {onnx_path.name} failed: {exc}")
    return "ran"


def _train_for(config: PipelineConfig, data: Path, checkpoint: Path,
               log: Callable[[str], None]) -> str:
    """Train detr-tiny epoch by epoch (resuming) until ``train_minutes`` are used."""
    from detr.train.config import TrainConfig
    from detr.train.loop import train

    run_dir = checkpoint.parent / "train"
    deadline = time.perf_counter() + config.train_minutes * 60
    epoch = 0
    last = None
    while True:
        epoch += 1
        t0 = time.perf_counter()
        last = train(TrainConfig(
            data=str(data), out=str(run_dir), preset="detr-tiny", epochs=epoch,
            resume=epoch > 1, batch_size=min(8, config.num_train), lr=2e-4, lr_backbone=2e-4,
            scales=(config.image_size,), max_size=config.image_size, crop=False,
            num_workers=0, eval_every=0, progress=config.progress,
            model_overrides={"num_queries": 10, "dropout": 0.0}))
        took = time.perf_counter() - t0
        log(f"epoch {epoch} done in {took:.0f} s")
        if time.perf_counter() + took > deadline:
            break
    shutil.copyfile(last.checkpoint, checkpoint)
    return "ran"
