"""TensorRT-readiness check of an ONNX model, on CPU (no TensorRT needed).

Answers "will the TensorRT ONNX parser and builder accept this graph, and will
it compute the right thing?" with one PASS/FAIL/INFO line per check:

- opset within the parser's range, every op in its support table (export/trt_ops.py)
- no CumSum (wrong results on TensorRT 10.8-10.11, onnx-tensorrt#1034)
- no data-dependent Pad (pads must be a constant / initializer)
- input/output shapes static except the batch dimension
- INT64 tensors (info: TensorRT casts them to INT32)
- Q/DQ nodes symmetric: zero point an int8 constant of zeros (TensorRT rejects others)
- FP16 overflow scan: ORT run on a few inputs; FAIL if a node turns finite inputs
  into inf/NaN (an FP16 value beyond 65504 is inf), INFO listing FP32 tensors
  beyond the FP16 safe margin; -inf attention-mask constants are not overflows
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from export.activation_ranges import collect_activation_ranges, random_feeds
from export.int8.calib_data import iter_feeds, list_images
from export.onnx_graph import constant_names, constant_value
from export.onnx_meta import load_onnx, read_meta
from export.trt_ops import MAX_OPSET, MIN_OPSET, RESTRICTIONS, SOURCE, supported_ops
from runtime.backends.onnxruntime_backend import ort_failures
from runtime.errors import DetrEdgeError

if TYPE_CHECKING:
    import onnx

PASS, FAIL, INFO = "PASS", "FAIL", "INFO"
FP16_MAX = 65504.0
# FP32 activations above FP16_MAX / 4 leave less than 2 bits of headroom: an
# FP16 build would overflow on slightly brighter inputs (AutoCast-style data_max).
FP16_SAFE_MAX = FP16_MAX / 4


@dataclass(frozen=True)
class CheckResult:
    name: str  # short check name, e.g. "supported ops"
    status: str  # PASS | FAIL | INFO
    detail: str  # one line: what was found


@dataclass
class CheckReport:
    path: str
    trt_version: int
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (INFO lines do not fail)."""
        return all(r.status != FAIL for r in self.results)

    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == FAIL]

    def format(self) -> str:
        lines = [f"check-onnx {self.path} (TensorRT {self.trt_version}.x parser)"]
        lines += [f"{r.status:<4}  {r.name}: {r.detail}" for r in self.results]
        verdict = "TensorRT should build this model" if self.ok else \
            f"TensorRT will not build this model correctly ({', '.join(self.failed())})"
        lines.append(f"=> {verdict}")
        lines.append(f"op table: {SOURCE}")
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckConfig:
    trt_version: int = 10  # TensorRT major version whose parser table is used (10 | 11)
    calib_data: str | None = None  # image folder for the overflow scan; None = random inputs
    num_inputs: int = 2  # how many inputs the overflow scan runs
    overflow_scan: bool = True  # False skips the ORT run (pure graph checks)


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes of ``graph`` and of its subgraphs (If/Loop/Scan bodies)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.g.node:
                nodes += _all_nodes(attr.g)
            for sub in attr.graphs:
                nodes += _all_nodes(sub)
    return nodes


def check_opset(model: onnx.ModelProto, trt: int) -> CheckResult:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return CheckResult("opset", FAIL, "no default-domain opset import")
    if not MIN_OPSET <= opset <= MAX_OPSET[trt]:
        return CheckResult("opset", FAIL, f"opset {opset} outside {MIN_OPSET}..{MAX_OPSET[trt]}")
    return CheckResult("opset", PASS, f"opset {opset} (parser range {MIN_OPSET}..{MAX_OPSET[trt]})")


def check_supported_ops(model: onnx.ModelProto, trt: int) -> CheckResult:
    table = supported_ops(trt)
    bad: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if key not in table:
            bad[key] = bad.get(key, 0) + 1
    if bad:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(bad.items()))
        return CheckResult("supported ops", FAIL, f"not in the TensorRT {trt}.x parser: {listed}")
    kinds = len({n.op_type for n in _all_nodes(model.graph)})
    return CheckResult("supported ops", PASS, f"all {kinds} op types supported")


def check_no_cumsum(model: onnx.ModelProto) -> CheckResult:
    found = [n.name or n.output[0] for n in _all_nodes(model.graph) if n.op_type == "CumSum"]
    if found:
        return CheckResult("no CumSum", FAIL, f"{len(found)} CumSum node(s) ({found[0]}...): "
                           + RESTRICTIONS["CumSum"])
    return CheckResult("no CumSum", PASS, "none")


def check_pad(model: onnx.ModelProto) -> CheckResult:
    constants = constant_names(model)
    bad = []
    pads = [n for n in _all_nodes(model.graph) if n.op_type == "Pad"]
    for node in pads:
        # opset >= 11: pads is input 1; before that an attribute (always constant).
        if len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
            bad.append(node.name or node.output[0])
    if bad:
        return CheckResult("constant Pad", FAIL, f"pads computed at run time in {', '.join(bad)}"
                           " (data-dependent Pad; make the padding a constant)")
    return CheckResult("constant Pad", PASS, f"{len(pads)} Pad node(s), all constant pads")


def check_static_shapes(model: onnx.ModelProto) -> CheckResult:
    initializers = {i.name for i in model.graph.initializer}
    bad = []
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape"):
            bad.append(f"{value.name} has unknown rank")
            continue
        for axis, dim in enumerate(dims):
            static = dim.HasField("dim_value") and dim.dim_value > 0
            if axis > 0 and not static:
                bad.append(f"{value.name} dim {axis} is '{dim.dim_param or '?'}'")
    if bad:
        return CheckResult("static shapes", FAIL, "only the batch dim may be dynamic: "
                           + "; ".join(bad))
    return CheckResult("static shapes", PASS, "inputs/outputs static except the batch dim")


def check_int64(model: onnx.ModelProto) -> CheckResult:
    import onnx

    int64 = onnx.TensorProto.INT64
    inits = sum(1 for i in model.graph.initializer if i.data_type == int64)
    ios = [v.name for v in list(model.graph.input) + list(model.graph.output)
           if v.type.tensor_type.elem_type == int64]
    detail = f"{inits} INT64 initializer(s) (shape/index constants; TensorRT casts to INT32)"
    if ios:
        detail += f"; INT64 graph inputs/outputs: {', '.join(ios)}"
    return CheckResult("INT64 tensors", INFO, detail)


def check_qdq(model: onnx.ModelProto) -> CheckResult:
    qdq = [n for n in _all_nodes(model.graph)
           if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return CheckResult("Q/DQ symmetric", PASS, "no Q/DQ nodes")
    bad = []
    for node in qdq:
        label = node.name or node.output[0]
        if len(node.input) < 3 or not node.input[2]:
            bad.append(f"{label}: no zero point (defaults to uint8)")
            continue
        zp = constant_value(model, node.input[2])
        if zp is None:
            bad.append(f"{label}: zero point is not a constant")
        elif zp.dtype != np.int8:
            bad.append(f"{label}: zero point is {zp.dtype}, TensorRT needs int8")
        elif np.any(zp != 0):
            bad.append(f"{label}: nonzero zero point (asymmetric)")
        if constant_value(model, node.input[1]) is None:
            bad.append(f"{label}: scale is not a constant")
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        return CheckResult("Q/DQ symmetric", FAIL, "; ".join(bad[:3]) + more)
    return CheckResult("Q/DQ symmetric", PASS, f"{len(qdq)} Q/DQ nodes, int8, zero point 0")


def nonfinite_origins(model: onnx.ModelProto, max_abs: dict[str, float]) -> list[str]:
    """Nodes that turn finite inputs into inf/NaN outputs: real overflows.

    Tensors that are inf because a constant is (the -inf of an additive attention
    mask, propagated through Where/Reshape/Add) are intentional and not reported.
    """
    from onnx import numpy_helper

    finite_init = {i.name: bool(np.isfinite(numpy_helper.to_array(i)).all())
                   for i in model.graph.initializer if i.data_type in (1, 10, 11)}
    origins = []
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            continue
        if not any(o in max_abs and not np.isfinite(max_abs[o]) for o in node.output):
            continue
        inputs_finite = all(np.isfinite(max_abs[i]) if i in max_abs else finite_init.get(i, True)
                            for i in node.input if i)
        if inputs_finite:
            origins.append(node.name or node.output[0])
    return origins


def check_overflow(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]],
                   source: str) -> CheckResult:
    import onnx

    ranges = collect_activation_ranges(model, feeds)
    fp16 = onnx.TensorProto.FLOAT16
    where = f"{ranges.num_feeds} {source} input(s)"
    origins = nonfinite_origins(model, ranges.max_abs)
    if origins:
        return CheckResult("FP16 overflow", FAIL, f"{len(origins)} node(s) produce inf/NaN from "
                           f"finite inputs on {where}: {', '.join(origins[:5])}")
    n16 = sum(1 for n in ranges.max_abs if ranges.dtype.get(n) == fp16)
    masked = sum(1 for v in ranges.max_abs.values() if not np.isfinite(v))
    note = f"; {masked} tensor(s) carry +-inf from constants (attention masks)" if masked else ""
    hot32 = sorted((n for n, v in ranges.max_abs.items()
                    if ranges.dtype.get(n) != fp16 and np.isfinite(v) and v > FP16_SAFE_MAX),
                   key=lambda n: -ranges.max_abs[n])
    if hot32:
        top = ", ".join(f"{n}={ranges.max_abs[n]:.3g}" for n in hot32[:5])
        return CheckResult("FP16 overflow", INFO, f"{n16} FP16 tensors within range; "
                           f"{len(hot32)} FP32 tensor(s) above the FP16 safe margin "
                           f"{FP16_SAFE_MAX:.0f} on {where} (keep them FP32): {top}{note}")
    peak = max((v for v in ranges.max_abs.values() if np.isfinite(v)), default=0.0)
    return CheckResult("FP16 overflow", PASS, f"{n16} FP16 tensors, max finite |x| {peak:.3g} "
                       f"on {where}{note}")


def _with_target_hint(model: onnx.ModelProto, result: CheckResult) -> CheckResult:
    """A failed Q/DQ check on a ``quantize --target cpu`` model says what to do."""
    if result.status != FAIL:
        return result
    try:
        meta = read_meta(model)
    except DetrEdgeError:  # a foreign ONNX without detr-edge metadata: no hint
        return result
    if meta.int8_format == "cpu":
        return dataclasses.replace(result, detail=(
            "quantized with --target cpu (ONNX Runtime's uint8 format); for TensorRT run "
            "`detr-edge quantize --target tensorrt`: " + result.detail))
    return result


def check_onnx(path: str | os.PathLike[str], config: CheckConfig | None = None) -> CheckReport:
    """Run every check on the ONNX file at ``path``.

    Raises ``ModelFormatError`` when the file is missing, truncated or not ONNX.
    """
    config = config or CheckConfig()
    supported_ops(config.trt_version)  # validates the version early
    model = load_onnx(path)
    report = CheckReport(str(path), config.trt_version)
    report.results += [
        check_opset(model, config.trt_version),
        check_supported_ops(model, config.trt_version),
        check_no_cumsum(model),
        check_pad(model),
        check_static_shapes(model),
        check_int64(model),
        _with_target_hint(model, check_qdq(model)),
    ]
    if config.overflow_scan:
        with ort_failures(path, "while running the model for the overflow scan"):
            if config.calib_data:
                meta = read_meta(model, path)
                paths = list_images(config.calib_data, config.num_inputs)
                feeds = list(iter_feeds(paths, meta, batch_size=1))
                report.results.append(check_overflow(model, feeds, "calibration"))
            else:
                feeds = random_feeds(model, count=config.num_inputs)
                report.results.append(check_overflow(model, feeds, "random normalised"))
    return report
