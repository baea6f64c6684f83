"""``detr-edge pipeline``: the main job, one command from data to benchmark report.

Stages (each prints a header and its wall time):
1. dataset   - the user's COCO-layout dataset (``--data``), checked and described
               (``benchmarks.workflow.dataset_check``); without ``--data``, the synthetic
               shapes of the demo model's recipe (``detr.data.synthetic``);
2. model     - ``--checkpoint``, ``train_minutes`` of ``detr.train`` on the train
               split, or the committed demo checkpoint;
3. onnx-fp32 - ``export.onnx_export`` (parity-checked against PyTorch);
4. onnx-fp16 - the same exporter with ``precision='fp16'``;
5. int8      - ``export.int8.quantize`` (explicit Q/DQ within an AP budget), in TensorRT's
               format and (int8-cpu) in ONNX Runtime's uint8 CPU format: calibrated on
               the train split, the budget measured on the val split's annotations;
6. engines   - ``export.engine_builder`` when TensorRT and a GPU are present;
7. benchmark - ``benchmarks.suite.run_benchmark`` over everything above, on the val split.

The canvas (the exported input ``H x W``) holds every image of the dataset at the
model's training resize (``benchmarks.workflow.dataset_check.choose_canvas``) unless
``canvas`` is given.

Resuming: every stage records a fingerprint of its inputs (config + SHA-256 of
input files) in ``out/stages/<name>.json``; when the fingerprint matches and the
outputs exist, the stage is skipped (``benchmarks.workflow.pipeline_stages.StageCache``).
An interrupted pipeline therefore resumes where it stopped, and a changed
checkpoint re-runs everything downstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import detr
from benchmarks.int8_frontier import write_int8_section
from benchmarks.report import Report
from benchmarks.suite import BenchmarkConfig, run_benchmark
from benchmarks.workflow import pipeline_stages as stages
from benchmarks.workflow.dataset_check import (
    DatasetSummary,
    canvas_fill,
    check_dataset,
    checkpoint_rule,
    choose_canvas,
    training_rule,
)
from benchmarks.workflow.pipeline_stages import DataPaths, StageCache, StageRunner
from detr.data.synthetic import ShapesConfig, make_shapes_dataset
from export.int8.calib_data import list_images
from runtime.atomic import atomic_write_text
from runtime.dataset import annotated_split
from runtime.errors import InputError
from runtime.files import file_sha256

# The committed demo model (trained by detr/assets/README.md's recipe).
DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "detr" / "assets" / "detr-tiny-shapes.pth"

# dataset, model, onnx-fp32, onnx-fp16, int8, int8-cpu, engines, benchmark
NUM_STAGES = 8


@dataclass(frozen=True)
class PipelineConfig:
    """The main job's settings; defaults finish in well under 15 min on 2 CPU cores."""

    out: str = "runs/demo"  # everything goes here: data/, model/, artifacts/, report/
    data: str | None = None  # a COCO-layout dataset root; None = generate the demo shapes
    train_split: str = "train"  # calibration (and training) split of data
    val_split: str = "val"  # INT8 budget and benchmark split of data (COCO: val2017)
    train_minutes: float = 0.0  # 0 = start from checkpoint (or the committed demo one)
    checkpoint: str | None = None  # start from this checkpoint instead of the demo one
    preset: str = "detr-tiny"  # model trained by train_minutes
    canvas: tuple[int, int] | None = None  # export (H, W); None = from the dataset's sizes
    max_images: int = 200  # eval images per benchmark row: all 200 val images (~1 min a row)
    runs: int = 20  # timed runs per latency measurement (detr-tiny at 192 px: ~0.1 s each)
    warmup: int = 2  # untimed runs before them
    batch_sizes: tuple[int, ...] = (1,)  # throughput batch sizes (the ONNX graphs are batch 1)
    image_size: int = 192  # demo dataset image side (the model input comes from the checkpoint)
    num_train: int = 2000  # demo training images (generated only when training)
    num_val: int = 200  # demo validation images
    max_objects: int = 4  # objects per image (the demo model's dataset, detr/assets/README.md)
    size_band_probs: tuple[float, float, float] = (0.0, 0.6, 0.4)  # small/medium/large: demo's
    max_large: int = 1  # at most one large shape per image (demo's dataset)
    seed: int = 0  # demo dataset seed
    calib_images: int = 32  # INT8 calibration images (from the train split, never val)
    quant_eval_images: int = 200  # val images that decide the INT8 AP budget (all 200 of the
    #                               demo: the paired dAP SE is ~0.2 AP, under half the budget)
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
        if self.canvas is not None and (len(self.canvas) != 2 or min(self.canvas) < 32
                                        or any(v % 32 for v in self.canvas)):
            raise InputError("--canvas", f"need H W, multiples of 32, got {self.canvas}")
        if self.data is not None and self.train_minutes == 0 and self.checkpoint is None:
            raise InputError("--data", "the demo model knows only the demo shapes: give "
                             "--checkpoint (trained on this dataset) or --train-minutes M")


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
    dataset: DatasetSummary | None = None
    canvas: tuple[int, int] = (0, 0)  # exported (H, W)


def run_pipeline(config: PipelineConfig, log: Callable[[str], None] = print) -> PipelineResult:
    """Run (or resume) the main job; returns the result with the benchmark report."""
    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(StageCache(out), NUM_STAGES, log)
    result = PipelineResult(out=out, checkpoint=out / "model" / "checkpoint.pth",
                            artifacts=out / "artifacts", report_dir=out / "report",
                            stage_seconds=runner.seconds, stage_status=runner.status)
    total0 = time.perf_counter()
    data, data_inputs = _dataset_stage(config, out, runner.stage)
    result.dataset = _checked_dataset(config, data, out, runner)
    _model_stage(config, result, data, data_inputs, runner)
    result.canvas = config.canvas or _canvas(result.checkpoint, result.dataset, log)
    _export_stages(config, result, data, data_inputs, runner)
    result.report = _benchmark_stage(config, result, data, runner)
    log(f"\nstage times: {runner.summary()}; total {time.perf_counter() - total0:.1f} s")
    for line in write_int8_section(result.artifacts, result.report_dir,
                                   list_images(data.val_dir, 1)):
        log(line)
    log(f"report: {result.report_dir / 'report.md'} (also report.json, plot.png, "
        "int8_frontier.png)")
    return result


def _checked_dataset(config: PipelineConfig, data: DataPaths, out: Path,
                     runner: StageRunner) -> DatasetSummary:
    """Stage 1's checks (``dataset_check``), against the given checkpoint's classes;
    they run every time and count as dataset time."""
    source = _source_checkpoint(config)
    given = source.is_file() and config.train_minutes == 0
    if config.train_minutes == 0 and not given:
        raise InputError(source, "checkpoint not found (train one with --train-minutes M)")
    t0 = time.perf_counter()
    summary = check_dataset(data.root, [data.train_split, data.val_split],
                            _label_map(source) if given else None)
    runner.log(summary.describe())
    atomic_write_text(out / "dataset.json", json.dumps(summary.to_dict(), indent=1))
    runner.seconds["dataset"] += time.perf_counter() - t0
    return summary


def _source_checkpoint(config: PipelineConfig) -> Path:
    return Path(config.checkpoint) if config.checkpoint else DEMO_CHECKPOINT


def _model_stage(config: PipelineConfig, result: PipelineResult, data: DataPaths,
                 data_inputs: dict[str, Any], runner: StageRunner) -> None:
    """Stage 2: train for ``train_minutes``, or copy the given (or demo) checkpoint."""
    assert result.dataset is not None
    if config.train_minutes > 0:
        plan = _train_plan(config, result.dataset)
        runner.stage("model", {"plan": asdict(plan), "dataset": data_inputs},
                     [result.checkpoint], stages.bind(stages.train_for, plan, data,
                                                      result.checkpoint, config.progress,
                                                      runner.log))
    else:
        source = _source_checkpoint(config)
        runner.stage("model", {"checkpoint": file_sha256(source)}, [result.checkpoint],
                     stages.bind(stages.copy_checkpoint, source, result.checkpoint))


def _export_stages(config: PipelineConfig, result: PipelineResult, data: DataPaths,
                   data_inputs: dict[str, Any], runner: StageRunner) -> None:
    """Stages 3-6: ONNX FP32 / FP16, INT8 in both Q/DQ formats, TensorRT engines."""
    art, canvas, log = result.artifacts, result.canvas, runner.log
    ckpt_digest = file_sha256(result.checkpoint)
    for precision in ("fp32", "fp16"):
        onnx_path = art / f"model_{precision}.onnx"
        runner.stage(f"onnx-{precision}", {"checkpoint": ckpt_digest, "canvas": canvas},
                     [onnx_path], stages.bind(stages.export, result.checkpoint, onnx_path,
                                              canvas, precision, data, log))
    fp32_onnx = art / "model_fp32.onnx"
    for target, name in (("tensorrt", "int8"), ("cpu", "int8-cpu")):
        int8 = art / f"model_{name.replace('-', '_')}.onnx"
        runner.stage(name, {"onnx": file_sha256(fp32_onnx), "calib_images": config.calib_images,
                            "eval_images": config.quant_eval_images, "target": target,
                            "dataset": data_inputs}, [int8],
                     stages.bind(stages.quantize, fp32_onnx, int8, data, config.calib_images,
                                 config.quant_eval_images, target, config.progress, log))
    runner.stage("engines", {"onnx": [file_sha256(p) for p in sorted(art.glob("*.onnx"))]},
                 sorted(art.glob("*.engine")) or [art / "model_fp32.engine"],
                 stages.bind(stages.engines, art, data, config.build_engines, log))


def _benchmark_stage(config: PipelineConfig, result: PipelineResult, data: DataPaths,
                     runner: StageRunner) -> Report:
    """The last stage, always re-measured (timings are the point of the run)."""
    bench = BenchmarkConfig(checkpoint=str(result.checkpoint), data=str(data.root),
                            split=data.val_split, artifacts=str(result.artifacts),
                            height=result.canvas[0], width=result.canvas[1],
                            batch_sizes=config.batch_sizes, runs=config.runs,
                            warmup=config.warmup, max_images=config.max_images,
                            out=str(result.report_dir), measure_memory=config.measure_memory,
                            progress=config.progress)
    runner.header("benchmark")
    t0 = time.perf_counter()
    report = run_benchmark(bench, log=runner.log)
    runner.done("benchmark", "ran", time.perf_counter() - t0)
    return report


Stage = Callable[[str, dict[str, Any], list[Path], Callable[[], str | None]], None]


def _dataset_stage(config: PipelineConfig, out: Path,
                   stage: Stage) -> tuple[DataPaths, dict[str, Any]]:
    """The dataset the other stages use, and its fingerprint for their caches."""
    if config.data is not None:
        root = Path(config.data)
        for split in (config.train_split, config.val_split):
            annotated_split(root, split)  # early, clear error for a wrong root or split
        data = DataPaths(root, config.train_split, config.val_split)
        anns = [root / "annotations" / f"instances_{s}.json" for s in (data.train_split,
                                                                        data.val_split)]
        inputs = {"root": str(root.resolve()), "annotations": [file_sha256(a) for a in anns]}
        stage("dataset", inputs, [], lambda: "checked")  # never cached: the checks always run
        return data, inputs
    # Without training, the train split only feeds INT8 calibration.
    num_train = config.num_train if config.train_minutes > 0 else config.calib_images
    shapes = ShapesConfig(seed=config.seed, num_train=num_train, num_val=config.num_val,
                          image_size=config.image_size, max_objects=config.max_objects,
                          size_band_probs=config.size_band_probs, max_large=config.max_large)
    data = DataPaths(out / "data", "train", "val")
    stage("dataset", {"shapes": asdict(shapes)},
          [data.root / "annotations" / "instances_val.json",
           data.root / "annotations" / "instances_train.json"],
          lambda: (make_shapes_dataset(data.root, shapes), "ran")[1])
    return data, {"shapes": asdict(shapes)}


def _label_map(checkpoint: Path) -> list[int] | None:
    return detr.load_checkpoint(checkpoint).label_map or None


def _train_plan(config: PipelineConfig, summary: DatasetSummary) -> stages.TrainPlan:
    """Demo: the demo recipe's square canvas. A user's dataset: the resize rule
    from its size distribution, enough queries for its most crowded image."""
    train = summary.splits[0]
    if config.data is None:
        rule, queries = (config.image_size, config.image_size), 10
    else:
        rule = training_rule(train.sizes, default=config.image_size)
        queries = min(100, max(10, 2 * summary.max_objects()))
    return stages.TrainPlan(minutes=config.train_minutes, preset=config.preset, rule=rule,
                            batch_size=max(1, min(8, train.images)), num_queries=queries)


def _canvas(checkpoint: Path, summary: DatasetSummary,
            log: Callable[[str], None]) -> tuple[int, int]:
    rule = checkpoint_rule(detr.load_checkpoint(checkpoint).raw)
    sizes = summary.sizes()
    canvas = choose_canvas(sizes, *rule)
    log(f"canvas {canvas[0]}x{canvas[1]} (HxW): holds all {len(sizes)} images at the "
        f"training resize (shorter side {rule[0]}, longer <= {rule[1]}); images fill "
        f"{100 * canvas_fill(sizes, canvas, *rule):.0f}% of it on average")
    return canvas
