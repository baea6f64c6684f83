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
(``export.int8.qdq_check.inspect_qdq`` verifies it), laid out so that ONNX Runtime's CPU
provider runs it as integer kernels (``export.int8.ort_fusion_layout``). ``target="cpu"``
writes ONNX Runtime's own uint8-activation format instead: faster on a CPU,
not a TensorRT input. Quantization itself is ONNX Runtime's ``quantize_static``
(``export.int8.qdq_insert``). The calibration ranges are cached
(``export.int8.candidate_models``), so every configuration is re-quantized
without re-calibrating, and a rerun after Ctrl-C resumes from the cache.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.check_onnx import CheckConfig, check_onnx
from export.int8.calib_data import QuantImages, iter_feeds, quant_images, split_images
from export.int8.candidate_models import CandidateModels
from export.int8.config import QuantizeConfig, weight_bits
from export.int8.nodes import ensure_node_names, group_blocks, head_nodes, quantizable_nodes
from export.int8.objective import PAYS_RATIO, Objective, pays, pseudo_budget
from export.int8.qdq_check import inspect_qdq
from export.int8.report import QuantizeReport
from export.int8.search import SearchResult, SearchSettings, search, to_dicts
from export.int8.sensitivity import HeldOutEvaluator
from export.int8.verdict import time_verdict
from export.onnx_meta import load_onnx, read_meta, write_meta
from runtime import json_limits
from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.backends.onnxruntime_backend import ort_failures
from runtime.decode import decoding_protocol
from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class _SearchJob:
    """What the search of one :func:`quantize_int8` call works on."""

    onnx_path: str | os.PathLike[str]  # the FP32 model as given (messages, report)
    fp32_path: Path  # its copy with every node named, in the work folder
    images: QuantImages  # calibration and held-out images
    blocks: dict[str, list[str]]  # fallback unit -> names of its quantizable nodes
    build: CandidateModels  # configuration -> INT8 model file
    heads: set[str]  # output-head nodes: never quantized
    meta: ModelMeta  # the FP32 model's metadata
    config: QuantizeConfig


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
    import onnx

    config.validate()
    fp32 = ensure_node_names(load_onnx(onnx_path))
    meta = read_meta(fp32, onnx_path)
    if meta.precision != "fp32":
        raise InputError(onnx_path, f"model is already {meta.precision}; quantize the FP32 "
                         "export (detr-edge export-onnx --precision fp32)")
    images = _images(calib_images, config)
    heads = head_nodes(fp32)
    blocks = _blocks(fp32, heads, onnx_path, config)
    cache_dir = Path(config.cache_dir) if config.cache_dir else (
        Path(config.out_path).parent if config.out_path else Path(tempfile.gettempdir()))
    cache_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="detr-edge-quant.") as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        atomic_write_bytes(fp32_path, fp32.SerializeToString())
        build = CandidateModels(fp32, fp32_path, work, blocks, images.calib, meta, config,
                                cache_dir)
        job = _SearchJob(onnx_path, fp32_path, images, blocks, build, heads, meta, config)
        report = _run_resumable(job)
        final = onnx.load(os.fspath(build(report.fallback_blocks, report.block_methods)))
    _finish(final, report, meta, heads, onnx_path, config)
    return final, report


def _blocks(fp32: onnx.ModelProto, heads: set[str], onnx_path: str | os.PathLike[str],
            config: QuantizeConfig) -> dict[str, list[str]]:
    """``{fallback unit: node names}`` of the nodes to quantize (not the heads)."""
    candidates = [n for n in quantizable_nodes(fp32, config.quantize_attention)
                  if n.name not in heads]
    if not candidates:
        raise ModelFormatError(onnx_path, "no Conv/MatMul/Gemm with constant weights to quantize")
    if config.granularity == "block":
        return group_blocks(fp32, candidates)
    return {n.name: [n.name] for n in candidates}


def _run_resumable(job: _SearchJob) -> QuantizeReport:
    """:func:`_run`; on Ctrl-C, says where the calibration ranges are kept."""
    try:
        with ort_failures(job.onnx_path):
            return _run(job)
    except KeyboardInterrupt:
        cached = job.build.cache(job.config.method)
        print(f"\nquantize interrupted; calibration ranges "
              f"{'are cached in ' + str(cached) if cached.exists() else 'not saved'}"
              ": rerun the same command to resume", file=sys.stderr)
        raise


def _finish(final: onnx.ModelProto, report: QuantizeReport, meta: ModelMeta, heads: set[str],
            onnx_path: str | os.PathLike[str], config: QuantizeConfig) -> None:
    """Check the chosen model's Q/DQ format and graph, write its metadata, and write
    it and the report when ``config.out_path`` is set."""
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


def _images(calib_images: str | os.PathLike[str] | Sequence[Path],
            config: QuantizeConfig) -> QuantImages:
    """Calibration and held-out images for a path or an explicit image list."""
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


def report_path(out_path: str | os.PathLike[str]) -> Path:
    """``model.int8.onnx`` -> ``model.int8.quant.json``."""
    return Path(out_path).with_suffix(".quant.json")


def _check(model: onnx.ModelProto) -> list[str]:
    """check-onnx graph checks (TensorRT 10 table) on ``model``; result lines."""
    with tempfile.TemporaryDirectory(prefix="detr-edge-check.") as tmp:
        path = Path(tmp) / "int8.onnx"
        path.write_bytes(model.SerializeToString())
        checked = check_onnx(path, CheckConfig(overflow_scan=False))
    return [f"{r.status} {r.name}: {r.detail}" for r in checked.results]


def _run(job: _SearchJob) -> QuantizeReport:
    """The search on the held-out images (or full INT8 without them); the report."""
    config, images = job.config, job.images
    report = _new_report(job)
    batch = max(job.meta.batch_size or 1, 1)
    feed = next(iter_feeds((images.held_out or images.calib)[:batch], job.meta, batch))
    if not images.held_out:
        _time_full_int8(job, report, feed)
        return report
    evaluator = HeldOutEvaluator(job.fp32_path, images.held_out,
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
    objective = Objective(evaluator, job.fp32_path, feed, config.latency_runs,
                          config.warmup_runs, config.threads, config.seed)
    result = search(job.blocks, job.build, objective, SearchSettings(
        budget=budget, default_method=config.method, method_blocks=config.method_blocks,
        candidates=config.candidates, speed_fallback=config.speed_fallback,
        progress=config.progress))
    _fill(report, result, objective, job.heads, job.blocks, budget)
    if config.latency_runs:
        _time_chosen(job, report, result, feed)
    return report


def _new_report(job: _SearchJob) -> QuantizeReport:
    """The report before any measurement: inputs, candidates, nothing decided."""
    config = job.config
    return QuantizeReport(
        source=str(job.onnx_path), output=None, target=config.target, method=config.method,
        num_calib_images=len(job.images.calib), num_eval_images=len(job.images.held_out),
        ground_truth="none", quantized_nodes=0,
        candidate_nodes=sum(len(v) for v in job.blocks.values()), fallback_blocks=[],
        fallback_nodes=sorted(job.heads), fp32_ap=None, int8_ap=None,
        ap_budget=config.ap_budget, within_budget=None, calib_data=job.images.calib_from,
        eval_data=job.images.eval_from)


def _time_full_int8(job: _SearchJob, report: QuantizeReport,
                    feed: dict[str, np.ndarray]) -> None:
    """No held-out images: full INT8 against FP32, latency only."""
    config = job.config
    if config.latency_runs:
        verdict = time_verdict(job.onnx_path, job.build([]), feed, config.latency_runs,
                               config.threads)
        report.latency_ms = {"fp32": verdict.fp32_ms, "int8": verdict.int8_ms}
        report.latency_ratios = list(verdict.ratios)
        report.pays = report.latency_ratio <= PAYS_RATIO


def _time_chosen(job: _SearchJob, report: QuantizeReport, result: SearchResult,
                 feed: dict[str, np.ndarray]) -> None:
    """The verdict: the written graph against the source FP32 file, timed as the
    benchmark re-times it (export.int8.verdict), not one run of the search's timing."""
    config, final = job.config, result.final
    verdict = time_verdict(job.onnx_path, job.build(final.fallback, final.methods), feed,
                           config.latency_runs, config.threads)
    final.fp32_latency_ms, final.latency_ms = verdict.fp32_ms, verdict.int8_ms
    report.frontier = to_dicts(result)["tried"]
    report.latency_ms = {"fp32": final.fp32_latency_ms, "int8": final.latency_ms}
    report.latency_ratios = list(verdict.ratios)
    report.pays = pays(final)


def _fill(report: QuantizeReport, result: SearchResult, objective: Objective, heads: set[str],
          blocks: dict[str, list[str]], budget: float) -> None:
    """The search's outcome into the report (everything but the final timing)."""
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
