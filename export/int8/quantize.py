"""INT8 explicit quantization (Q/DQ ONNX) of a detr-edge FP32 ONNX model within
an AP budget.

DETR collapses under naive INT8 PTQ (the box MLP and the last decoder layers
are fragile), so this keeps accuracy in three ways:
- only weight-bearing Conv/MatMul/Gemm are quantized (attention
  activation x activation MatMuls only on request), the output heads
  ``class_embed`` / ``bbox_embed`` never;
- ranges come from real images through ``runtime.preprocess``;
- a measured search (``export.int8.search``): full INT8 first, then better
  calibration ranges per block, then FP32 fallback chosen by AP recovered per
  ms lost, decided on held-out images (the val split of a dataset, with its
  annotations) with a paired bootstrap error (``export.int8.objective``).

The Q/DQ format (``export.int8.qdq_insert``) is TensorRT's by default: symmetric
INT8, zero point 0, per-tensor activations, per-channel weights
(``export.int8.nodes.inspect_qdq`` verifies it), laid out so that ONNX Runtime's CPU
provider runs it as integer kernels (``export.int8.ort_fusion_layout``). ``target="cpu"``
writes ONNX Runtime's own uint8-activation format instead: faster on a CPU,
not a TensorRT input. Quantization itself is ONNX Runtime's ``quantize_static``. The
calibration ranges are cached (keyed by model, images and method), so every
configuration is re-quantized without re-calibrating, and a rerun after Ctrl-C
resumes from the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.int8.qdq_insert import TARGETS, quantize_nodes, weight_bits
from export.int8.report import QuantizeReport
from runtime import json_limits
from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.errors import DataError, InputError, ModelFormatError
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
    eval_images: int = 500  # held-out images (val split) that decide; 0 = no search
    eval_ann: str | None = None  # COCO annotations of a plain image folder; None = the
    #                              dataset's own, else FP32 pseudo ground truth
    eval_data: str | None = None  # held-out images from here (a dataset root: its val split);
    #                               None = the val split of --calib-data's dataset, if any
    pseudo_gt: bool = False  # ignore annotations: score INT8 against FP32 pseudo ground truth
    pseudo_top_k: int = 10  # detections per image kept as pseudo ground truth
    pseudo_budget: float | None = None  # budget in pseudo-GT points; None = mapped from
    #                                     ap_budget (export.int8.objective.pseudo_budget)
    second_best: bool = True  # AP with the official PostProcess; False drops no-object slots
    method_blocks: int = 4  # most sensitive blocks whose calibration method is searched
    candidates: int = 3  # FP32-fallback candidates measured per search step
    seed: int = 0  # image selection / split
    quantize_attention: bool = False  # also quantize activation x activation MatMuls
    quantize_add: bool = True  # Q/DQ on residual Add outputs too: ORT CPU runs QLinearAdd
    target: str = "tensorrt"  # Q/DQ format: tensorrt (symmetric int8) | cpu (ORT uint8)
    # Weight bits of the cpu format: 7 never saturates ORT's u8 x s8 kernels on AVX2 CPUs
    # without VNNI (runtime.cpu_features); 8 is for VNNI/ARM-only deployments. TensorRT: 8.
    weight_bits: int | None = None  # None = 7 for target cpu, 8 for tensorrt
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
        if self.weight_bits not in (None, 7, 8) or (self.weight_bits == 7
                                                     and self.target == "tensorrt"):
            raise InputError("--weight-bits", f"7 or 8 (7 only for --target cpu), got "
                             f"{self.weight_bits}")
        if self.granularity not in ("block", "layer"):
            raise InputError("--granularity", f"unknown {self.granularity!r} (block|layer)")
        if self.calib_images <= 0 or self.eval_images < 0 or self.latency_runs < 0:
            raise InputError("--calib-images/--eval-images", "must be positive")


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over preprocessed calibration feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _cache_key(model: onnx.ModelProto, images: Sequence[Path], config: QuantizeConfig,
               method: str) -> str:
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    # The cpu target calibrates more tensors (ReLU/Add outputs): its own cache.
    h.update(json.dumps([method, config.percentile, config.quantize_attention,
                         [str(p) for p in images]] + (["cpu-s2d"] if config.target == "cpu" else [])
                        ).encode())
    return h.hexdigest()[:16]


class _Builder:
    """INT8 models of configurations (FP32 blocks, calibration method per block),
    each made once; one calibration per method, cached on disk."""

    def __init__(self, fp32: onnx.ModelProto, fp32_path: Path, work: Path,
                 blocks: dict[str, list[str]], calib: list[Path], meta: ModelMeta,
                 config: QuantizeConfig, cache_dir: Path) -> None:
        from export.int8.calib_methods import tensor_blocks

        self.fp32, self.fp32_path, self.work, self.blocks = fp32, fp32_path, work, blocks
        self.calib, self.meta, self.config, self.cache_dir = calib, meta, config, cache_dir
        self.nodes = [n for nodes in blocks.values() for n in nodes]
        self.owner = tensor_blocks(fp32, blocks)
        self.made: dict[tuple[frozenset[str], tuple[tuple[str, str], ...]], Path] = {}

    def cache(self, method: str) -> Path:
        return self.cache_dir / \
            f"detr-edge-calib-{_cache_key(self.fp32, self.calib, self.config, method)}.json"

    def _reader(self) -> _Reader:
        from export.int8.calib_data import fixed_size_batches, iter_feeds

        batch = self.meta.batch_size or 1
        return _Reader(fixed_size_batches(self.calib, self.meta, batch) if self.meta.batch_size
                       else iter_feeds(self.calib, self.meta, batch))

    def _calibrated(self, method: str) -> Path:
        """The calibration cache of ``method`` (calibrating every node once if absent)."""
        path = self.cache(method)
        _drop_unreadable_cache(path)
        if not path.is_file():
            quantize_nodes(self.fp32_path, self.work / f"calib_{method}.onnx", self.nodes,
                           self._reader(), path, dataclasses.replace(self.config, method=method))
        return path

    def __call__(self, fallback: Sequence[str], methods: dict[str, str] | None = None) -> Path:
        from export.int8.calib_methods import merge_caches

        methods = {b: m for b, m in (methods or {}).items() if m != self.config.method}
        key = (frozenset(fallback), tuple(sorted(methods.items())))
        if key not in self.made:
            cache = self._calibrated(self.config.method)
            if methods:
                cache = merge_caches(cache, {m: self._calibrated(m) for m in set(methods.values())},
                                     methods, self.owner, self.cache_dir)
            skip = {n for b in fallback for n in self.blocks[b]}
            path = self.work / f"int8_{len(self.made)}.onnx"
            quantize_nodes(self.fp32_path, path, [n for n in self.nodes if n not in skip],
                           self._reader(), cache, self.config)
            self.made[key] = path
        return self.made[key]


def quantize_int8(onnx_path: str | os.PathLike[str], calib_images: str | Sequence[Path],
                  config: QuantizeConfig) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Quantize the FP32 detr-edge ONNX at ``onnx_path`` to INT8 Q/DQ.

    calib_images: a dataset root, a split folder or an image folder
    (``export.int8.calib_data.quant_images``: train calibrates, val decides), or a list
    of image paths (seeded split, pseudo ground truth unless ``eval_ann``).
    Returns the INT8 model (metadata precision 'int8') and the report; writes
    both when ``config.out_path`` is set. Raises ``InputError`` for bad
    arguments, ``ModelFormatError`` if the result is not in the target format.
    """
    from export.int8.nodes import ensure_node_names, group_blocks, head_nodes, quantizable_nodes
    from export.onnx_meta import load_onnx, read_meta
    from runtime.backends.onnxruntime_backend import ort_failures

    config.validate()
    fp32 = ensure_node_names(load_onnx(onnx_path))
    meta = read_meta(fp32, onnx_path)
    if meta.precision != "fp32":
        raise InputError(onnx_path, f"model is already {meta.precision}; quantize the FP32 "
                         "export (detr-edge export-onnx --precision fp32)")
    images = _images(calib_images, config)
    heads = head_nodes(fp32)
    candidates = [n for n in quantizable_nodes(fp32, config.quantize_attention)
                  if n.name not in heads]
    if not candidates:
        raise ModelFormatError(onnx_path, "no Conv/MatMul/Gemm with constant weights to quantize")
    blocks = group_blocks(fp32, candidates) if config.granularity == "block" \
        else {n.name: [n.name] for n in candidates}
    cache_dir = Path(config.cache_dir) if config.cache_dir else (
        Path(config.out_path).parent if config.out_path else Path(tempfile.gettempdir()))
    cache_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="detr-edge-quant.") as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        atomic_write_bytes(fp32_path, fp32.SerializeToString())
        build = _Builder(fp32, fp32_path, work, blocks, images.calib, meta, config, cache_dir)
        try:
            with ort_failures(onnx_path):
                report = _run(onnx_path, fp32_path, images, blocks, build, heads, meta, config)
        except KeyboardInterrupt:
            cached = build.cache(config.method)
            print(f"\nquantize interrupted; calibration ranges "
                  f"{'are cached in ' + str(cached) if cached.exists() else 'not saved'}"
                  ": rerun the same command to resume", file=sys.stderr)
            raise
        import onnx

        final = onnx.load(os.fspath(build(report.fallback_blocks, report.block_methods)))
    _finish(final, report, meta, heads, onnx_path, config)
    return final, report


def _finish(final: onnx.ModelProto, report: QuantizeReport, meta: ModelMeta, heads: set[str],
            onnx_path: str | os.PathLike[str], config: QuantizeConfig) -> None:
    """Check the chosen model's Q/DQ format and graph, write its metadata, and write
    it and the report when ``config.out_path`` is set."""
    from export.int8.nodes import inspect_qdq
    from export.onnx_meta import write_meta

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
        "weight_bits": weight_bits(config), "block_methods": report.block_methods,
        "fallback_blocks": report.fallback_blocks, "ground_truth": report.ground_truth,
        # NaN = not measured; metadata readers refuse non-JSON numbers.
        **{k: json_limits.finite_or_none(getattr(report, k))
           for k in ("fp32_ap", "int8_ap", "latency_ratio")}, "pays": report.pays,
        "source": Path(onnx_path).name}})
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


def _images(calib_images: str | os.PathLike[str] | Sequence[Path], config: QuantizeConfig) -> Any:
    """``export.int8.calib_data.QuantImages`` for a path or an explicit image list."""
    from export.int8.calib_data import QuantImages, quant_images, split_images

    if isinstance(calib_images, (str, os.PathLike)):
        return quant_images(calib_images, config.calib_images, config.eval_images, config.seed,
                            config.eval_ann, config.eval_data)
    paths = [Path(p) for p in calib_images]
    if config.eval_data:
        return quant_images(config.eval_data, config.calib_images, config.eval_images,
                            config.seed, config.eval_ann, config.eval_data, calib=paths)
    split = split_images(paths, config.calib_images, config.eval_images, config.seed)
    ann = Path(config.eval_ann) if config.eval_ann else None
    return QuantImages(split.calib, split.held_out, ann, None, f"{len(paths)} given images",
                       f"{len(paths)} given images")


def _drop_unreadable_cache(path: Path) -> None:
    """ORT writes its calibration cache non-atomically; a cache cut short by
    Ctrl-C is removed so the rerun recalibrates instead of failing on it."""
    if not path.is_file():
        return
    try:
        json_limits.read_json_file(path, what="calibration cache", allow_nan=True)
    except DataError:
        path.unlink(missing_ok=True)


def report_path(out_path: str | os.PathLike[str]) -> Path:
    """``model.int8.onnx`` -> ``model.int8.quant.json``."""
    return Path(out_path).with_suffix(".quant.json")


def _check(model: onnx.ModelProto) -> list[str]:
    """check-onnx graph checks (TensorRT 10 table) on ``model``; result lines."""
    from export.check_onnx import CheckConfig, check_onnx

    with tempfile.TemporaryDirectory(prefix="detr-edge-check.") as tmp:
        path = Path(tmp) / "int8.onnx"
        path.write_bytes(model.SerializeToString())
        checked = check_onnx(path, CheckConfig(overflow_scan=False))
    return [f"{r.status} {r.name}: {r.detail}" for r in checked.results]


def _run(onnx_path: str | os.PathLike[str], fp32_path: Path, images: Any,
         blocks: dict[str, list[str]], build: Callable[..., Path], heads: set[str],
         meta: ModelMeta, config: QuantizeConfig) -> QuantizeReport:
    """The search on the held-out images (or full INT8 without them); the report."""
    from export.int8.calib_data import iter_feeds
    from export.int8.objective import (
        PAYS_RATIO,
        Objective,
        interleaved_latency,
        pays,
        pseudo_budget,
    )
    from export.int8.search import SearchSettings, search, to_dicts
    from export.int8.sensitivity import HeldOutEvaluator
    from runtime.decode import decoding_protocol

    report = QuantizeReport(
        source=str(onnx_path), output=None, target=config.target, method=config.method,
        num_calib_images=len(images.calib), num_eval_images=len(images.held_out),
        ground_truth="none", quantized_nodes=0,
        candidate_nodes=sum(len(v) for v in blocks.values()), fallback_blocks=[],
        fallback_nodes=sorted(heads), fp32_ap=None, int8_ap=None, ap_budget=config.ap_budget,
        within_budget=None, calib_data=images.calib_from, eval_data=images.eval_from)
    batch = max(meta.batch_size or 1, 1)
    feed = next(iter_feeds((images.held_out or images.calib)[:batch], meta, batch))
    if not images.held_out:
        fp32_ms, ms = interleaved_latency(fp32_path, build([]), feed, config.latency_runs,
                                          config.warmup_runs, config.threads)
        if config.latency_runs:
            report.latency_ms = {"fp32": fp32_ms, "int8": ms}
            report.pays = report.latency_ratio <= PAYS_RATIO
        return report
    evaluator = HeldOutEvaluator(fp32_path, images.held_out,
                                 None if config.pseudo_gt else images.annotations,
                                 config.pseudo_top_k, config.threads,
                                 second_best=config.second_best, image_ids=images.image_ids,
                                 # TensorRT's arithmetic on any CPU: fused ORT kernels
                                 # saturate on AVX2 without VNNI (runtime.cpu_features).
                                 exact_int8=config.target == "tensorrt")
    budget = config.ap_budget if not evaluator.pseudo else (
        config.pseudo_budget if config.pseudo_budget is not None
        else pseudo_budget(config.ap_budget))
    report.ground_truth, report.decision_budget = evaluator.ground_truth, budget
    report.decoding = decoding_protocol(config.second_best)
    if config.progress:
        print(f"quantize: deciding by {report.metric} on {len(images.held_out)} held-out images "
              f"of {images.eval_from}, budget {budget:.2f}", file=sys.stderr)
    objective = Objective(evaluator, fp32_path, feed, config.latency_runs, config.warmup_runs,
                          config.threads, config.seed)
    result = search(blocks, build, objective, SearchSettings(
        budget=budget, default_method=config.method, method_blocks=config.method_blocks,
        candidates=config.candidates, progress=config.progress))
    _fill(report, result, objective, heads, blocks, budget)
    if config.latency_runs:
        # The written model is timed again, 3x longer: the verdict rests on this figure.
        final = result.final
        final.fp32_latency_ms, final.latency_ms = interleaved_latency(
            fp32_path, build(final.fallback, final.methods), feed, 3 * config.latency_runs,
            config.warmup_runs, config.threads)
        report.frontier = to_dicts(result)["tried"]
        report.latency_ms = {"fp32": final.fp32_latency_ms, "int8": final.latency_ms}
        report.pays = pays(final)
    return report


def _fill(report: QuantizeReport, result: Any, objective: Any, heads: set[str],
          blocks: dict[str, list[str]], budget: float) -> None:
    """The search's outcome into the report (everything but the final timing)."""
    from export.int8.search import to_dicts

    final = result.final
    final.chosen = True
    parts = to_dicts(result)
    report.frontier, report.sensitivity = parts["tried"], parts["sensitivity"]
    report.method_trials, report.steps = parts["method_trials"], parts["steps"]
    report.stop_reason = result.stop_reason
    report.fallback_blocks, report.block_methods = list(final.fallback), dict(final.methods)
    report.fallback_nodes = sorted(heads | {n for b in final.fallback for n in blocks[b]})
    report.fp32_ap, report.int8_ap, report.dap_se = objective.fp32_ap, final.ap, final.dap_se
    report.within_budget = -final.dap <= budget + 1e-9
    if final.dap_se > budget / 2:
        report.stop_reason += (f"; noise: the SE {final.dap_se:.2f} is not well under the "
                               f"budget {budget:.2f}: use more held-out images")
