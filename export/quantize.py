"""INT8 explicit quantization (Q/DQ ONNX) of a detr-edge FP32 ONNX model within
an AP budget.

DETR collapses under naive INT8 PTQ (the box MLP and the last decoder layers
are fragile), so this keeps accuracy in three ways:
- only weight-bearing Conv/MatMul/Gemm are quantized (attention
  activation x activation MatMuls only on request), the output heads
  ``class_embed`` / ``bbox_embed`` never;
- ranges come from real images through ``runtime.preprocess``;
- sensitive blocks fall back to FP32 until the AP drop on held-out images is
  within the budget (``export.sensitivity``).

The Q/DQ format (``export.qdq_format``) is TensorRT's by default: symmetric
INT8, zero point 0, per-tensor activations, per-channel weights
(``export.qdq.inspect_qdq`` verifies it), laid out so that ONNX Runtime's CPU
provider runs it as integer kernels (``export.qdq_layout``). ``target="cpu"``
writes ONNX Runtime's own uint8-activation format instead: faster on a CPU,
not a TensorRT input. Quantization itself is ONNX Runtime's ``quantize_static``. The
calibration ranges are cached (keyed by model, images and method), so every
fallback configuration is re-quantized without re-calibrating, and a rerun
after Ctrl-C resumes from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.qdq_format import TARGETS, quantize_nodes
from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.decode import decoding_protocol
from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta

if TYPE_CHECKING:
    import onnx

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeConfig:
    out_path: str | None = None  # INT8 ONNX to write (report: <out>.quant.json); None = no files
    calib_images: int = 256  # calibration images drawn (seeded) from the calibration data
    method: str = "minmax"  # activation ranges: minmax | entropy | percentile
    percentile: float = 99.999  # for method=percentile
    ap_budget: float = 0.5  # max AP drop vs FP32, COCO points (0..100 scale)
    eval_images: int = 64  # held-out images for sensitivity/AP; 0 = no fallback search
    eval_ann: str | None = None  # COCO annotations of the held-out images; None = those of
    #                   the resolved dataset split, else FP32 pseudo ground truth (AP = agreement)
    eval_data: str | None = None  # held-out images from here (a dataset root: its val split)
    #                               instead of split off the calibration data
    pseudo_gt: bool = False  # ignore annotations: score INT8 against FP32 pseudo ground truth
    pseudo_top_k: int = 10  # detections per image kept as pseudo ground truth
    second_best: bool = True  # AP with the official PostProcess; False drops no-object slots
    seed: int = 0  # image selection / split
    quantize_attention: bool = False  # also quantize activation x activation MatMuls
    quantize_add: bool = True  # Q/DQ on residual Add outputs too: ORT CPU runs QLinearAdd
    target: str = "tensorrt"  # Q/DQ format: tensorrt (symmetric int8) | cpu (ORT uint8)
    granularity: str = "block"  # fallback unit: block (backbone stage, encoder layer..) | layer
    latency_runs: int = 20  # timed ORT runs per model (median reported)
    warmup_runs: int = 3  # untimed runs first
    threads: int | None = None  # ORT intra-op threads; None = ORT default
    cache_dir: str | None = None  # calibration cache folder; None = next to out_path / temp
    progress: bool = True  # tqdm bars

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError("--method", f"unknown method {self.method!r} ({'|'.join(METHODS)})")
        if self.ap_budget < 0:
            raise InputError("--ap-budget", f"must be >= 0 AP points, got {self.ap_budget}")
        if 0 < self.ap_budget < 1e-3 or self.ap_budget > 100:
            raise InputError("--ap-budget", f"{self.ap_budget} is in COCO points (0..100), "
                             "e.g. 0.5 for half an AP point")
        if self.target not in TARGETS:
            raise InputError("--target", f"unknown target {self.target!r} ({'|'.join(TARGETS)})")
        if self.granularity not in ("block", "layer"):
            raise InputError("--granularity", f"unknown {self.granularity!r} (block|layer)")
        if self.calib_images <= 0 or self.eval_images < 0 or self.latency_runs < 0:
            raise InputError("--calib-images/--eval-images", "must be positive")


@dataclass
class QuantizeReport:
    source: str  # FP32 ONNX
    output: str | None  # INT8 ONNX written (None = not written)
    target: str  # Q/DQ format: tensorrt | cpu (export.qdq_format)
    method: str
    num_calib_images: int
    num_eval_images: int
    ground_truth: str  # "annotations" | "FP32 top-k" | "none"
    quantized_nodes: int  # Conv/MatMul/Gemm in INT8 in the final model
    candidate_nodes: int  # quantizable nodes (heads excluded)
    fallback_blocks: list[str]  # blocks kept in FP32 by the search
    fallback_nodes: list[str]  # their node names (+ heads, always FP32)
    fp32_ap: float | None  # COCO points 0..100 on the held-out images
    int8_ap: float | None
    ap_budget: float
    within_budget: bool | None
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # block, nodes, output_error
    search: list[dict[str, Any]] = field(default_factory=list)  # fallback, ap per step
    latency_ms: dict[str, float] = field(default_factory=dict)  # fp32/int8 median ORT CPU ms
    check_onnx: list[str] = field(default_factory=list)  # check-onnx result lines
    decoding: str = ""  # how AP was counted (runtime.decode.decoding_protocol)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        def ap(v: float | None) -> str:
            return "n/a" if v is None else f"{v:6.2f}"

        lines = [(f"quantize {self.source} -> {self.output or '(not written)'} "
                  f"({self.target} Q/DQ format)"),
                 (f"  method {self.method}, {self.num_calib_images} calibration / "
                  f"{self.num_eval_images} held-out images, ground truth: {self.ground_truth}"
                  f"{', AP decoding: ' + self.decoding if self.decoding else ''}"),
                 f"  {'model':<6} {'AP':>7} {'latency ms':>11}"]
        for name, value in (("fp32", self.fp32_ap), ("int8", self.int8_ap)):
            ms = self.latency_ms.get(name, float("nan"))
            lines.append(f"  {name:<6} {ap(value):>7} {ms:>11.2f}")
        if self.fp32_ap is not None and self.int8_ap is not None:
            verdict = "within" if self.within_budget else "OVER"
            lines.append(f"  AP drop {self.fp32_ap - self.int8_ap:.2f} points, {verdict} the "
                         f"budget of {self.ap_budget:.2f}")
        lines.append(f"  INT8 nodes {self.quantized_nodes}/{self.candidate_nodes}; "
                     f"FP32 fallback: {', '.join(self.fallback_blocks) or 'none'} "
                     "(+ class_embed/bbox_embed heads)")
        if self.sensitivity:
            lines.append(f"  {'block':<28} {'nodes':>5} {'output error':>13}")
            lines += [f"  {s['block']:<28} {len(s['nodes']):>5} {s['output_error']:>13.5f}"
                      for s in self.sensitivity]
        return "\n".join(lines)


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over preprocessed calibration feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _cache_key(model: onnx.ModelProto, images: Sequence[Path], config: QuantizeConfig) -> str:
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    # The cpu target calibrates more tensors (ReLU/Add outputs): its own cache.
    h.update(json.dumps([config.method, config.percentile, config.quantize_attention,
                         [str(p) for p in images]] + (["cpu-s2d"] if config.target == "cpu" else [])
                        ).encode())
    return h.hexdigest()[:16]


def median_latency_ms(path: str | os.PathLike[str], feed: dict[str, np.ndarray], runs: int,
                      warmup: int, threads: int | None) -> float:
    """Median wall time of ``runs`` ORT CPU runs after ``warmup`` untimed ones."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)) if times else float("nan")


def quantize_int8(onnx_path: str | os.PathLike[str], calib_images: str | Sequence[Path],
                  config: QuantizeConfig) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Quantize the FP32 detr-edge ONNX at ``onnx_path`` to INT8 Q/DQ.

    calib_images: an image folder or a list of image paths; a seeded split gives
    ``config.eval_images`` held-out images (AP/sensitivity, never calibrated on)
    and up to ``config.calib_images`` calibration images.
    Returns the INT8 model (metadata precision 'int8') and the report; writes
    both when ``config.out_path`` is set. Raises ``InputError`` for bad
    arguments, ``ModelFormatError`` if the result is not TensorRT-compatible.
    """
    from export.calib_data import fixed_size_batches, iter_feeds
    from export.onnx_meta import load_onnx, read_meta, write_meta
    from export.qdq import (
        ensure_node_names,
        group_blocks,
        head_nodes,
        inspect_qdq,
        quantizable_nodes,
    )

    config.validate()
    fp32 = ensure_node_names(load_onnx(onnx_path))
    meta = read_meta(fp32, onnx_path)
    if meta.precision != "fp32":
        raise InputError(onnx_path, f"model is already {meta.precision}; quantize the FP32 "
                         "export (detr-edge export-onnx --precision fp32)")
    split, found_ann = _select(calib_images, config)
    heads = head_nodes(fp32)
    candidates = [n for n in quantizable_nodes(fp32, config.quantize_attention)
                  if n.name not in heads]
    if not candidates:
        raise ModelFormatError(onnx_path, "no Conv/MatMul/Gemm with constant weights to quantize")
    blocks = group_blocks(fp32, candidates) if config.granularity == "block" \
        else {n.name: [n.name] for n in candidates}
    all_nodes = [n.name for n in candidates]

    cache_dir = Path(config.cache_dir) if config.cache_dir else (
        Path(config.out_path).parent if config.out_path else Path(tempfile.gettempdir()))
    cache_path = cache_dir / f"detr-edge-calib-{_cache_key(fp32, split.calib, config)}.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    _drop_unreadable_cache(cache_path)
    batch = meta.batch_size or 1
    feeds = fixed_size_batches(split.calib, meta, batch) if meta.batch_size \
        else iter_feeds(split.calib, meta, batch)

    with tempfile.TemporaryDirectory(prefix="detr-edge-quant.") as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        atomic_write_bytes(fp32_path, fp32.SerializeToString())
        made: dict[frozenset[str], Path] = {}

        def build(keep_fp32: Sequence[str]) -> Path:
            """INT8 model with the nodes of ``keep_fp32`` blocks left in FP32."""
            key = frozenset(keep_fp32)
            if key not in made:
                skip = {n for b in keep_fp32 for n in blocks[b]}
                path = work / f"int8_{len(made)}.onnx"
                quantize_nodes(fp32_path, path, [n for n in all_nodes if n not in skip],
                               _Reader(feeds), cache_path, config)
                made[key] = path
            return made[key]

        try:
            report = _run(onnx_path, fp32_path, split, blocks, build, heads, meta, config,
                          len(all_nodes), cache_path, found_ann)
        except KeyboardInterrupt:
            print(f"\nquantize interrupted; calibration ranges "
                  f"{'are cached in ' + str(cache_path) if cache_path.exists() else 'not saved'}"
                  ": rerun the same command to resume", file=sys.stderr)
            raise
        import onnx

        final = onnx.load(os.fspath(made[frozenset(report.fallback_blocks)]))
    info = inspect_qdq(final, config.target)
    if info.problems:
        raise ModelFormatError(onnx_path, f"INT8 model is not in the {config.target} Q/DQ "
                               "format: " + "; ".join(info.problems[:3]))
    quantized_heads = sorted(info.quantized & heads)
    if quantized_heads:
        raise ModelFormatError(onnx_path, f"output heads were quantized: {quantized_heads}")
    report.quantized_nodes = len(info.quantized)
    int8_meta = meta.replace(precision="int8", extra={**meta.extra, "int8": {
        "method": config.method, "target": config.target,
        "fallback_blocks": report.fallback_blocks,
        "fp32_ap": report.fp32_ap, "int8_ap": report.int8_ap, "source": Path(onnx_path).name}})
    write_meta(final, int8_meta)
    report.check_onnx = _check(final) if config.target == "tensorrt" else [
        "SKIP check-onnx: the cpu format (uint8 activations) is for ONNX Runtime, not TensorRT"]
    if any(line.startswith("FAIL") for line in report.check_onnx):
        raise ModelFormatError(onnx_path, "INT8 model fails check-onnx: "
                               + "; ".join(x for x in report.check_onnx if x.startswith("FAIL")))
    if config.out_path:
        report.output = config.out_path
        atomic_write_bytes(config.out_path, final.SerializeToString())
        atomic_write_text(report_path(config.out_path),
                          json.dumps(report.to_dict(), indent=2, default=float))
    return final, report


def _drop_unreadable_cache(path: Path) -> None:
    """ORT writes its calibration cache non-atomically; a cache cut short by
    Ctrl-C is removed so the rerun recalibrates instead of failing on it."""
    if not path.is_file():
        return
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        path.unlink(missing_ok=True)


def report_path(out_path: str | os.PathLike[str]) -> Path:
    """``model.int8.onnx`` -> ``model.int8.quant.json``."""
    return Path(out_path).with_suffix(".quant.json")


def _select(calib: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
            config: QuantizeConfig) -> tuple[Any, Path | None]:
    """Calibration and held-out images, and the held-out images' annotation file.

    ``calib`` as a folder goes through ``runtime.dataset.resolve_dataset`` (a
    dataset root gives its train split). Held-out images are split off it, or
    drawn from ``config.eval_data`` (a dataset root gives its val split)."""
    from export.calib_data import ImageSplit, select_images, split_images
    from runtime.dataset import resolve_dataset

    if isinstance(calib, (str, os.PathLike)):
        data = resolve_dataset(calib, default_split="train")
        paths, ann = data.images, data.annotations
    else:
        paths, ann = [Path(p) for p in calib], None
    if config.eval_data is None:
        return split_images(paths, config.calib_images, config.eval_images, config.seed), ann
    held = resolve_dataset(config.eval_data, default_split="val")
    held_out = select_images(held.images, config.eval_images, config.seed) \
        if config.eval_images else []
    return ImageSplit(calib=select_images(paths, config.calib_images, config.seed),
                      held_out=held_out), held.annotations


def _check(model: onnx.ModelProto) -> list[str]:
    """check-onnx graph checks (TensorRT 10 table) on ``model``; result lines."""
    from export.check_onnx import CheckConfig, check_onnx

    with tempfile.TemporaryDirectory(prefix="detr-edge-check.") as tmp:
        path = Path(tmp) / "int8.onnx"
        path.write_bytes(model.SerializeToString())
        checked = check_onnx(path, CheckConfig(overflow_scan=False))
    return [f"{r.status} {r.name}: {r.detail}" for r in checked.results]


def _run(onnx_path: str | os.PathLike[str], fp32_path: Path, split: Any,
         blocks: dict[str, list[str]], build: Any, heads: set[str], meta: ModelMeta,
         config: QuantizeConfig, num_candidates: int, cache_path: Path,
         found_ann: Path | None) -> QuantizeReport:
    from tqdm import tqdm

    from export.sensitivity import (
        HeldOutEvaluator,
        greedy_fallback,
        output_error,
        rank_blocks,
    )

    full = build([])  # calibrates (or reads the cache) and quantizes everything
    report = QuantizeReport(
        source=str(onnx_path), output=None, target=config.target, method=config.method,
        num_calib_images=len(split.calib), num_eval_images=len(split.held_out),
        ground_truth="none", quantized_nodes=0, candidate_nodes=num_candidates,
        fallback_blocks=[], fallback_nodes=sorted(heads), fp32_ap=None, int8_ap=None,
        ap_budget=config.ap_budget, within_budget=None)
    if split.held_out:
        ann = None if config.pseudo_gt else (
            config.eval_ann or found_ann)
        evaluator = HeldOutEvaluator(fp32_path, split.held_out, ann, config.pseudo_top_k,
                                     config.threads, second_best=config.second_best)
        report.ground_truth = evaluator.ground_truth
        report.decoding = decoding_protocol(config.second_best)
        fp32_ap = evaluator.ap(fp32_path)
        first = evaluator.ap(full)
        order: list[str] = []
        if fp32_ap - first > config.ap_budget:
            bar = tqdm(list(blocks), desc="sensitivity", disable=not config.progress,
                       leave=False)

            def measure(nodes: list[str]) -> float:
                block = next(b for b, n in blocks.items() if n == nodes)
                bar.update(1)
                others = [b for b in blocks if b != block]
                return output_error(evaluator.reference, evaluator.outputs(build(others)))

            ranked = rank_blocks(blocks, measure)
            bar.close()
            report.sensitivity = [dataclasses.asdict(r) for r in ranked]
            order = [r.block for r in ranked]
        aps = {frozenset(): first}
        steps = tqdm(desc="fallback search", unit="model", disable=not config.progress or
                     not order, leave=False)

        def evaluate(fallback: list[str]) -> float:
            key = frozenset(fallback)
            if key not in aps:
                aps[key] = evaluator.ap(build(fallback))
                steps.update(1)
                steps.set_postfix(ap=f"{aps[key]:.2f}", fp32=f"{fp32_ap:.2f}")
            return aps[key]

        search = greedy_fallback(order, evaluate, fp32_ap, config.ap_budget)
        steps.close()
        report.search = [dataclasses.asdict(s) for s in search.steps]
        report.fallback_blocks = search.final.fallback
        report.fallback_nodes = sorted(heads | {n for b in search.final.fallback
                                                for n in blocks[b]})
        report.fp32_ap, report.int8_ap = fp32_ap, search.final.ap
        report.within_budget = search.within_budget
    if config.latency_runs:
        from export.calib_data import iter_feeds

        sample = (split.held_out or split.calib)[:max(meta.batch_size or 1, 1)]
        feed = next(iter_feeds(sample, meta, len(sample)))
        final = build(report.fallback_blocks)
        report.latency_ms = {
            name: median_latency_ms(path, feed, config.latency_runs, config.warmup_runs,
                                    config.threads)
            for name, path in (("fp32", fp32_path), ("int8", final))}
    return report
