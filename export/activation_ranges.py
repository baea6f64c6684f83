"""Per-tensor activation ranges (max |x|) of an ONNX model, measured with ONNX
Runtime on calibration inputs.

Every intermediate floating-point tensor is exposed as an extra graph output
(on a copy of the model), the model is run on each feed and the running
maximum of ``|x|`` is kept per tensor. Used by the FP16 converter (which nodes
must stay FP32), by ``check-onnx`` (FP16 overflow scan). Feeds from images:
``export.int8.calib_data.iter_feeds``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


@dataclass
class ActivationRanges:
    """``max_abs[name]`` = max |x| over all feeds (``inf`` if any value overflowed,
    ``nan`` if any value was NaN); ``dtype[name]`` = ONNX elem type of the tensor."""

    max_abs: dict[str, float] = field(default_factory=dict)
    dtype: dict[str, int] = field(default_factory=dict)
    num_feeds: int = 0


def _float_value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Value infos of every floating-point node output (shape inference fills types)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    infos = []
    for node in model.graph.node:
        for name in node.output:
            vi = known.get(name)
            if name and vi is not None and vi.type.tensor_type.elem_type in floats:
                infos.append(vi)
    return infos


def collect_activation_ranges(model: onnx.ModelProto,
                              feeds: Iterable[dict[str, np.ndarray]]) -> ActivationRanges:
    """Run ``model`` (ONNX Runtime, CPU, graph optimisations off so every tensor
    is the one in the file) on each feed and return per-tensor max |x|."""
    import onnx
    import onnxruntime as ort

    infos = _float_value_infos(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for vi in infos:
        if vi.name not in existing:
            probe.graph.output.append(vi)
            existing.add(vi.name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    ranges = ActivationRanges(dtype={vi.name: vi.type.tensor_type.elem_type for vi in infos})
    for out in model.graph.output:
        ranges.dtype.setdefault(out.name, out.type.tensor_type.elem_type)
    for feed in feeds:
        values = session.run(names, feed)
        ranges.num_feeds += 1
        for name, value in zip(names, values):
            if value.dtype.kind != "f" or value.size == 0:
                continue
            mag = np.abs(value.astype(np.float32))
            peak = float(np.nan) if np.isnan(mag).any() else float(mag.max())
            prev = ranges.max_abs.get(name)
            # NaN is sticky: once a tensor produced NaN the report must say so.
            if prev is None or np.isnan(peak) or (not np.isnan(prev) and peak > prev):
                ranges.max_abs[name] = peak
    return ranges


def random_feeds(model: onnx.ModelProto, count: int = 2, seed: int = 0,
                 batch_size: int = 1) -> list[dict[str, np.ndarray]]:
    """Random feeds for every graph input: float inputs ~ N(0, 1) (what normalised
    images look like), bool inputs all False (no padding), int inputs zeros;
    symbolic dims (the batch axis) get ``batch_size``."""
    import onnx

    rng = np.random.default_rng(seed)
    initializers = {i.name for i in model.graph.initializer}
    feeds = []
    for _ in range(count):
        feed = {}
        for inp in model.graph.input:
            if inp.name in initializers:
                continue
            ttype = inp.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch_size
                     for d in ttype.shape.dim]
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
            if np_dtype.kind == "f":
                feed[inp.name] = rng.standard_normal(shape).astype(np_dtype)
            else:
                feed[inp.name] = np.zeros(shape, dtype=np_dtype)
        feeds.append(feed)
    return feeds
