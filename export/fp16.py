"""FP16 ONNX conversion that keeps numerically sensitive nodes in FP32.

Own converter (no onnxconverter-common). Graph inputs and outputs stay float32,
so the runtime feeds the same preprocessed tensors and reads the same outputs;
inside, every node whose op is in :data:`FP16_OPS` runs in FP16 unless

- it is known-sensitive (:data:`SENSITIVE_OPS`: LayerNormalization's variance
  overflows FP16 (TensorRT#2781), Softmax over attention logits, the
  ReduceMean/Pow/Sqrt chains of decomposed normalisations, Exp/Log), or
- it produces the graph outputs (the class_embed logits and the bbox_embed
  sigmoid: cheap, and box errors turn directly into pixel offsets), or
- its FP32 activations on the calibration inputs exceed ``data_max`` (or a
  weight does): FP16 tops out at 65504 and we keep 4x (2 bits) of headroom,
  ``data_max = 65504 / 4``, because calibration images never cover the
  brightest/most cluttered deployment input (the idea of ModelOpt AutoCast's
  data-magnitude rule; the margin is our choice).

FP32 and FP16 regions are joined with Cast nodes (one per tensor and direction).
Weights (initializers) read by FP16 nodes are stored as FP16 copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from export.activation_ranges import collect_activation_ranges
from export.check_onnx import nonfinite_origins
from export.onnx_graph import producer_index

if TYPE_CHECKING:
    import onnx

FP16_MAX = 65504.0

# Ops that run in FP16 (ORT CPU has FP16 kernels for all of them, checked on ORT 1.32).
_FP16_OP_TABLE = """
Conv MatMul Gemm Add Sub Mul Div Relu MaxPool AveragePool GlobalAveragePool
BatchNormalization Transpose Reshape Flatten Concat Slice Gather Split Squeeze Unsqueeze
Expand Tile Where Sin Cos Erf Tanh Sigmoid Neg Abs Max Min Identity Resize Pad Clip
Softmax LayerNormalization ReduceMean Pow Sqrt Exp
"""
FP16_OPS = frozenset(_FP16_OP_TABLE.split())

# Numerically sensitive: kept FP32 whatever their range (see module docstring).
SENSITIVE_OPS = {
    "LayerNormalization": "normalisation: sum of squares overflows FP16 (TensorRT#2781)",
    "Softmax": "softmax over attention logits: exp() overflows, small probabilities underflow",
    "ReduceMean": "reduction of a normalisation chain (Pow/ReduceMean)",
    "Pow": "power in a normalisation chain (Pow/ReduceMean)",
    "Sqrt": "normalisation chain",
    "Exp": "exponential overflows FP16 beyond 11.1",
}

# Inputs that carry the op's data type T (others are indices, shapes, scales...).
_DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (0,), "Slice": (0,), "Gather": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
    "Expand": (0,), "Tile": (0,), "Split": (0,), "Resize": (0,), "Where": (1, 2),
    "Pad": (0, 2),
}
# Ops that accept any input type: never need a Cast in front.
_TYPE_AGNOSTIC = frozenset({"Cast", "Shape", "Size", "CastLike"})


@dataclass(frozen=True)
class FP16Config:
    data_max: float = FP16_MAX / 4  # FP32 |activation| above this keeps the node FP32 (4x margin)
    keep_sensitive: bool = True  # keep SENSITIVE_OPS in FP32
    keep_output_heads: bool = True  # keep the nodes producing graph outputs in FP32
    keep_nodes: tuple[str, ...] = ()  # extra node names to keep FP32 (e.g. from a sweep)
    # ONNX Runtime 1.32 CPU segfaults (layout optimisation level) on FP16 Transpose
    # perm [1,0,2] when the batch axis is symbolic (the attention head split of a
    # dynamic-batch graph, found by bisection); keep those FP32 in dynamic graphs.
    ort_transpose_workaround: bool = True


@dataclass(frozen=True)
class KeptNode:
    name: str  # node name (or first output name when unnamed)
    op_type: str
    reason: str


@dataclass
class FP16Report:
    data_max: float
    num_fp16_nodes: int = 0
    num_fp32_nodes: int = 0  # float nodes kept FP32 (listed in kept)
    num_casts: int = 0
    kept: list[KeptNode] = field(default_factory=list)
    parity_vs_fp32: dict[str, dict[str, float]] = field(default_factory=dict)  # output -> errs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [(f"FP16: {self.num_fp16_nodes} nodes FP16, {self.num_fp32_nodes} kept FP32, "
                  f"{self.num_casts} casts, data_max {self.data_max:.0f}")]
        lines += [f"  FP32 {k.op_type:<20} {k.name}: {k.reason}" for k in self.kept]
        for out, errs in self.parity_vs_fp32.items():
            lines.append(f"  vs FP32 ONNX {out}: max abs {errs['max_abs']:.3g}, "
                         f"mean abs {errs['mean_abs']:.3g}")
        return "\n".join(lines)


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _choose_fp32_nodes(model: onnx.ModelProto, ranges: dict[str, float],
                       config: FP16Config) -> dict[int, str]:
    """Index of each node to keep FP32 -> reason (only nodes that could be FP16)."""
    from onnx import numpy_helper

    weights_max = {i.name: float(np.abs(numpy_helper.to_array(i)).max(initial=0.0))
                   for i in model.graph.initializer
                   if i.data_type == 1}  # FLOAT
    heads = _output_head_nodes(model) if config.keep_output_heads else set()
    # inf that a constant carries (the -inf of attention masks) is exact in FP16 too;
    # only nodes that create inf/NaN from finite inputs are overflow problems.
    origins = set(nonfinite_origins(model, ranges))
    dynamic = any(not d.HasField("dim_value")
                  for i in model.graph.input for d in i.type.tensor_type.shape.dim[:1])
    keep: dict[int, str] = {}
    for idx, node in enumerate(model.graph.node):
        if node.op_type not in FP16_OPS:
            continue
        if config.keep_sensitive and node.op_type in SENSITIVE_OPS:
            keep[idx] = SENSITIVE_OPS[node.op_type]
        elif _node_label(node) in config.keep_nodes:
            keep[idx] = "listed in keep_nodes"
        elif (config.ort_transpose_workaround and dynamic and node.op_type == "Transpose"
              and [list(a.ints) for a in node.attribute if a.name == "perm"] == [[1, 0, 2]]):
            keep[idx] = "ONNX Runtime CPU crash on FP16 Transpose [1,0,2] with dynamic batch"
        elif idx in heads:
            keep[idx] = "output head (class_embed / bbox_embed last layer + sigmoid)"
        else:
            if _node_label(node) in origins:
                keep[idx] = "turns finite inputs into inf/NaN (overflow)"
                continue
            for name in list(node.input) + list(node.output):
                peak = ranges.get(name, weights_max.get(name))
                if peak is not None and np.isfinite(peak) and peak > config.data_max:
                    keep[idx] = f"|{name}| reaches {peak:.4g} > data_max {config.data_max:.0f}"
                    break
    return keep


# Ops walked through when collecting the output heads (layout and bias ops).
_HEAD_PASSTHROUGH = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
                               "Identity", "Add", "Sigmoid", "Gather", "Slice"})


def _output_head_nodes(model: onnx.ModelProto) -> set[int]:
    """Nodes from each graph output back to (and including) the last MatMul/Gemm:
    the final linear layer of class_embed and bbox_embed, its bias and the sigmoid."""
    producer = producer_index(model.graph)
    inits = {i.name for i in model.graph.initializer}
    heads: set[int] = set()
    for out in model.graph.output:
        name: str | None = out.name
        while name is not None and name in producer:
            idx = producer[name]
            node = model.graph.node[idx]
            heads.add(idx)
            if node.op_type in ("MatMul", "Gemm") or node.op_type not in _HEAD_PASSTHROUGH:
                break
            name = next((i for i in node.input if i and i not in inits), None)
    return heads


def _fold_float_constants(model: onnx.ModelProto) -> None:
    """Turn float Constant nodes into initializers so they can get FP16 copies."""
    from onnx import TensorProto

    kept = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if (node.op_type == "Constant" and value is not None
                and value.data_type == TensorProto.FLOAT):
            tensor = model.graph.initializer.add()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(
        inferred.graph.output)
    names = {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names |= {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return names


def _rewrite(model: onnx.ModelProto, keep: dict[int, str], report: FP16Report) -> None:
    """Retype the graph in place: FP16 nodes, FP16 weight copies, Cast bridges."""
    import onnx

    floats = _float_tensors(model)
    fp16_idx = {i for i, n in enumerate(model.graph.node)
                if n.op_type in FP16_OPS and i not in keep
                and any(t in floats for t in list(n.input) + list(n.output))}
    renamed = _rename_fp16_outputs(model, fp16_idx, floats)
    floats |= set(renamed.values())
    new_nodes, num_casts = _bridge_precisions(model, fp16_idx, floats)
    for original, inner in renamed.items():
        new_nodes.append(onnx.helper.make_node("Cast", [inner], [original],
                                               to=onnx.TensorProto.FLOAT,
                                               name=f"{original}__cast_out"))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    # Unused FP32 weights (all readers now use the FP16 copy) are dropped.
    used = {name for n in model.graph.node for name in n.input}
    remaining = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(remaining)
    del model.graph.value_info[:]
    report.num_fp16_nodes = len(fp16_idx)
    report.num_casts = num_casts + len(renamed)
    onnx.checker.check_model(model)


def _rename_fp16_outputs(model: onnx.ModelProto, fp16_idx: set[int],
                         floats: set[str]) -> dict[str, str]:
    """Graph outputs produced by FP16 nodes get an inner name (in place), so that a
    final Cast can give the graph its float32 output back. Returns ``{output: inner}``."""
    out_names = {o.name for o in model.graph.output}
    renamed = {}
    for i in fp16_idx:
        for o in model.graph.node[i].output:
            if o in out_names and o in floats:
                renamed[o] = f"{o}__fp16"
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = renamed.get(name, name)
        for k, name in enumerate(node.output):
            node.output[k] = renamed.get(name, name)
    return renamed


def _bridge_precisions(model: onnx.ModelProto, fp16_idx: set[int],
                       floats: set[str]) -> tuple[list[onnx.NodeProto], int]:
    """The nodes in order with a Cast in front of each input whose precision differs
    from its reader's (one Cast per tensor and direction), and FP16 copies of the
    weights FP16 nodes read (added to the graph). Returns ``(nodes, casts added)``."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    precision = {name: TensorProto.FLOAT for name in floats}
    casts: dict[tuple[str, int], str] = {}
    fp16_inits: dict[str, str] = {}
    new_nodes = []
    for idx, node in enumerate(model.graph.node):
        target = TensorProto.FLOAT16 if idx in fp16_idx else TensorProto.FLOAT
        data = _DATA_INPUTS.get(node.op_type)
        for k, name in enumerate(node.input):
            if not name or name not in floats or node.op_type in _TYPE_AGNOSTIC:
                continue
            if target == TensorProto.FLOAT16 and data is not None and k not in data:
                continue  # index/scale input: keeps its own type
            if name in inits:
                if target == TensorProto.FLOAT16:
                    if name not in fp16_inits:
                        arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                        model.graph.initializer.append(numpy_helper.from_array(
                            arr, f"{name}__fp16"))
                        fp16_inits[name] = f"{name}__fp16"
                    node.input[k] = fp16_inits[name]
                continue
            if precision.get(name, TensorProto.FLOAT) != target:
                key = (name, target)
                if key not in casts:
                    suffix = "fp16" if target == TensorProto.FLOAT16 else "fp32"
                    casts[key] = f"{name}__to_{suffix}"
                    new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=target,
                                                      name=f"{name}__cast_{suffix}"))
                node.input[k] = casts[key]
        for name in node.output:
            if name in floats:
                precision[name] = target
        new_nodes.append(node)
    return new_nodes, len(casts)


def _run(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def convert_to_fp16(model: onnx.ModelProto, calib_inputs: Sequence[dict[str, np.ndarray]],
                    config: FP16Config | None = None) -> tuple[onnx.ModelProto, FP16Report]:
    """FP16 copy of the FP32 ``model`` (float32 inputs/outputs kept).

    ``calib_inputs``: ORT feeds (e.g. ``{'images': [B,3,H,W] float32}``) used to
    measure FP32 activation ranges and the FP16-vs-FP32 output error in the report.
    Metadata props are copied unchanged (the caller updates ``precision``).
    """
    import onnx

    config = config or FP16Config()
    fp16 = onnx.ModelProto()
    fp16.CopyFrom(model)
    _fold_float_constants(fp16)
    ranges = collect_activation_ranges(fp16, calib_inputs).max_abs
    keep = _choose_fp32_nodes(fp16, ranges, config)
    report = FP16Report(data_max=config.data_max)
    report.kept = [KeptNode(_node_label(fp16.graph.node[i]), fp16.graph.node[i].op_type, why)
                   for i, why in sorted(keep.items())]
    report.num_fp32_nodes = len(keep)
    _rewrite(fp16, keep, report)
    names = [o.name for o in model.graph.output]
    for ref, got in zip(_run(model, calib_inputs), _run(fp16, calib_inputs)):
        for name, a, b in zip(names, ref, got):
            err = np.abs(a.astype(np.float64) - b.astype(np.float64))
            prev = report.parity_vs_fp32.get(name, {"max_abs": 0.0, "mean_abs": 0.0, "n": 0})
            report.parity_vs_fp32[name] = {
                "max_abs": max(prev["max_abs"], float(err.max())),
                "mean_abs": (prev["mean_abs"] * prev["n"] + float(err.mean())) / (prev["n"] + 1),
                "n": prev["n"] + 1}
    for errs in report.parity_vs_fp32.values():
        errs.pop("n")
    return fp16, report
