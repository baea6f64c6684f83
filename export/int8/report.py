"""The quantize report: what decided (metric, images, noise), what was chosen,
whether INT8 pays, and the AP / latency frontier of every configuration tried.

Written as ``<out>.quant.json`` and printed by ``detr-edge quantize``; the
pipeline's benchmark plot draws the frontier from the JSON
(``benchmarks.report``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class QuantizeReport:
    source: str  # FP32 ONNX
    output: str | None  # INT8 ONNX written (None = not written)
    target: str  # Q/DQ format: tensorrt | cpu (export.int8.qdq_insert)
    method: str  # default calibration method (blocks may differ: block_methods)
    num_calib_images: int
    num_eval_images: int  # held-out images that decided
    ground_truth: str  # "annotations" | "FP32 top-k" | "none"
    quantized_nodes: int  # Conv/MatMul/Gemm in INT8 in the final model
    candidate_nodes: int  # quantizable nodes (heads excluded)
    fallback_blocks: list[str]  # blocks kept in FP32 by the search
    fallback_nodes: list[str]  # their node names (+ heads, always FP32)
    fp32_ap: float | None  # COCO points 0..100 on the held-out images
    int8_ap: float | None
    ap_budget: float  # the budget asked for, in real AP points
    within_budget: bool | None
    calib_data: str = ""  # where the calibration images came from
    eval_data: str = ""  # where the held-out images came from
    decision_budget: float | None = None  # budget in the deciding metric's points
    dap_se: float | None = None  # paired bootstrap SE of int8_ap - fp32_ap
    block_methods: dict[str, str] = field(default_factory=dict)  # blocks not on `method`
    pays: bool | None = None  # INT8 faster than FP32 by the margin (None = not timed)
    latency_ms: dict[str, float] = field(default_factory=dict)  # fp32/int8 ORT CPU medians
    #   (int8 = fp32 x the median of latency_ratios: export.int8.verdict)
    latency_ratios: list[float] = field(default_factory=list)  # INT8/FP32, one per repeat
    frontier: list[dict[str, Any]] = field(default_factory=list)  # every configuration tried
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # block, nodes, output_error
    method_trials: list[dict[str, Any]] = field(default_factory=list)  # block, method, error
    steps: list[dict[str, Any]] = field(default_factory=list)  # fallback decisions
    stop_reason: str = ""
    check_onnx: list[str] = field(default_factory=list)  # check-onnx result lines
    decoding: str = ""  # how AP was counted (runtime.decode.decoding_protocol)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def latency_ratio(self) -> float:
        fp32, int8 = self.latency_ms.get("fp32", math.nan), self.latency_ms.get("int8", math.nan)
        return int8 / fp32 if fp32 > 0 else math.nan

    @property
    def metric(self) -> str:
        if self.ground_truth == "annotations":
            return "real COCO AP (annotations)"
        return f"pseudo-ground-truth AP ({self.ground_truth} detections as ground truth)"

    def format(self) -> str:
        lines = [(f"quantize {self.source} -> {self.output or '(not written)'} "
                 f"({self.target} Q/DQ format)"),
                 f"  calibration: {self.num_calib_images} images of {self.calib_data or '?'}"]
        if self.fp32_ap is None or self.int8_ap is None:
            lines.append("  no held-out images: every block INT8, no AP check")
        else:
            lines += self._decision_lines()
        lines += self._speed_lines()
        methods = ", ".join(f"{b}={m}" for b, m in self.block_methods.items())
        lines.append(f"  INT8 nodes {self.quantized_nodes}/{self.candidate_nodes}; FP32 fallback: "
                     f"{', '.join(self.fallback_blocks) or 'none'} (+ class_embed/bbox_embed "
                     f"heads); calibration {self.method}{' except ' + methods if methods else ''}")
        if self.frontier:
            lines += [("  configurations tried (AP / latency frontier; * = on the frontier, "
                      "> = written):")] + ["  " + row for row in frontier_table(self.frontier)]
        if self.stop_reason:
            lines.append(f"  search: {self.stop_reason}")
        lines += speed_lines(self.steps)
        return "\n".join(lines)

    def _decision_lines(self) -> list[str]:
        if self.fp32_ap is None or self.int8_ap is None:
            return []
        budget = self.decision_budget if self.decision_budget is not None else self.ap_budget
        scale = "" if self.ground_truth == "annotations" else (
            f" pseudo-GT points (mapped from {self.ap_budget:.2f} real AP points by the "
            "measured correspondence, export.int8.objective.pseudo_budget)")
        se = f" +- {self.dap_se:.2f}" if self.dap_se is not None else ""
        verdict = "within" if self.within_budget else "OVER"
        decoding = f", AP decoding: {self.decoding}" if self.decoding else ""
        return [(f"  decided on {self.num_eval_images} held-out images of "
                f"{self.eval_data or '?'} by {self.metric}{decoding}"),
                (f"  AP FP32 {self.fp32_ap:.2f}, INT8 {self.int8_ap:.2f}: dAP "
                f"{self.int8_ap - self.fp32_ap:+.2f}{se} (paired bootstrap SE over images), "
                f"{verdict} the budget of {budget:.2f}{scale}")]

    def _speed_lines(self) -> list[str]:
        if "int8" not in self.latency_ms:
            return []
        fp32, int8 = self.latency_ms["fp32"], self.latency_ms["int8"]
        line = (f"  latency, ONNX Runtime CPU, batch 1 (interleaved medians): FP32 {fp32:.2f} ms, "
                f"INT8 {int8:.2f} ms = {self.latency_ratio:.2f}x FP32")
        if self.latency_ratios:
            line += (f" (median of {len(self.latency_ratios)} repeats, range "
                     f"{min(self.latency_ratios):.2f}-{max(self.latency_ratios):.2f})")
        if self.pays is False:
            return [line, (f"  INT8 does not pay on this model: {self.latency_ratio:.2f}x FP32 "
                    "latency is not faster than FP32 by the 10% margin; deploy FP32 (or FP16)")]
        return [line]


def frontier_table(tried: list[dict[str, Any]]) -> list[str]:
    """Markdown table of the configurations tried, fastest first, with the Pareto
    frontier (no other configuration both faster and more accurate) marked."""
    rows = sorted(tried, key=lambda c: (_ratio(c), -c["ap"]))
    best_ap = -math.inf
    out = ["| | configuration | FP32 blocks | AP | dAP +- SE | ms | x FP32 |",
           "|---|---|---|---|---|---|---|"]
    for c in rows:
        on_front = c["ap"] > best_ap
        best_ap = max(best_ap, c["ap"])
        mark = (">" if c.get("chosen") else "") + ("*" if on_front else "")
        out.append(f"| {mark} | {c['name']} | {len(c['fallback'])} | {c['ap']:.2f} | "
                   f"{c['dap']:+.2f} +- {c['dap_se']:.2f} | {c['latency_ms']:.2f} | "
                   f"{_ratio(c):.2f} |")
    return out


def _ratio(c: dict[str, Any]) -> float:
    r = c.get("ratio")
    return math.inf if r is None or (isinstance(r, float) and math.isnan(r)) else float(r)


def speed_lines(steps: Sequence[dict[str, Any]]) -> list[str]:
    """Report lines of the speed rounds (the ``kind`` "speed" steps)."""
    out: list[str] = []
    for s in steps:
        if s.get("kind") != "speed":
            continue
        ratios = s["ratios"]
        verdict = "taken" if s["taken"] else f"not taken ({s.get('why', '')})"
        out.append(f"  speed fallback: + FP32 {s['group']} runs at {s['median_ratio']:.2f}x "
                   f"the time (range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} "
                   f"repeats, log-ratio {s['log_ratio']:+.3f} +- {s['log_ratio_se']:.3f} SE): "
                   f"{verdict}")
    return out
