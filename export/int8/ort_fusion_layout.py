"""Q/DQ layout that TensorRT accepts *and* ONNX Runtime's CPU provider fuses into
integer kernels, plus a look at the graph ONNX Runtime really runs.

Why the layout matters on a CPU. ONNX Runtime turns ``DQ -> Conv -> Q`` into
``QLinearConv`` (and ``DQ -> Gemm/MatMul`` into ``QGemm``/``MatMulIntegerToFloat``)
while it optimizes the session. On x86 its integer kernels take uint8
activations x int8 weights, so it first rewrites every symmetric int8
``Q -> DQ`` activation pair to uint8 (zero point 128) - but only a Q with
exactly one consumer. A Q/DQ shared by two consumers stays int8, the node
group is rejected, and the Conv runs as ``DequantizeLinear`` + FP32 Conv: slower
than the FP32 model. In DETR that is every ResNet block input (feeds ``conv1``
and the residual Add or the downsample conv) and the encoder/decoder tensors
that feed several projections (``src + pos`` feeds the q and k projections,
the encoder memory feeds k and v of every decoder layer).

ORT's quantizer shares one pair among all consumers, and ORT's
common-subexpression elimination merges Q nodes that read the same tensor
through the same scale/zero-point initializers back into one shared Q.
:func:`dedicate_activation_qdq` gives every consumer its own pair *and* its
own scale/zero-point initializers (same values). For TensorRT the graph means
exactly the same: every consumer still reads the tensor through a Q/DQ with the
same scale. (Letting ORT keep int8 activations instead, session option
``session.qdqisint8allowed=1``, is no way out: with its s8 x s8 kernels the
INT8 DETR-R50 ran ~9x slower than with u8 x s8 on an AVX512-VNNI EPYC.)

Two more passes remove float work ORT cannot fuse otherwise, both exact (same
outputs under ORT's reference Q/DQ semantics): :func:`quantize_add_before_relu`
(residual Add -> QLinearAdd) and :func:`quantize_maxpool_inputs` (the stem's
float MaxPool -> int8). :func:`apply_ort_fusion_layout` runs all three;
:func:`ort_optimized_graph` + :func:`unfused_weight_ops` check the result.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from export.onnx_graph import constant_names, consumers, producers

if TYPE_CHECKING:
    import onnx

# Float ops that ORT would run on a dequantized weight if it did not fuse them.
FLOAT_WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")


def apply_ort_fusion_layout(model: onnx.ModelProto, quantize_add: bool = True
                            ) -> dict[str, int]:
    """All layout passes, in order, on an ORT-quantized TensorRT-format Q/DQ model
    (in place), so that ONNX Runtime's CPU provider fuses it into integer kernels:
    quantized residual Adds (``quantize_add``), one Q/DQ pair per consumer, then
    one int8 MaxPool per quantized consumer. Returns ``{pass: changes}``."""
    done = {"add": quantize_add_before_relu(model) if quantize_add else 0}
    done["dedicated"] = dedicate_activation_qdq(model)
    done["maxpool"] = quantize_maxpool_inputs(model)
    return done


class _GraphIndex(NamedTuple):
    """Lookups every pass needs, built once per pass (before it edits the graph)."""

    inits: dict[str, onnx.TensorProto]  # initializer name -> tensor
    producer: dict[str, onnx.NodeProto]  # tensor -> node that outputs it
    uses: dict[str, list[tuple[onnx.NodeProto, int]]]  # tensor -> (consumer, input index)
    outputs: set[str]  # graph output names

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> _GraphIndex:
        return cls({i.name: i for i in graph.initializer}, producers(graph), consumers(graph),
                   {o.name for o in graph.output})


def _copy_initializer(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    """``tensor`` under a new ``name``: each new Q/DQ reads its own scale / zero point,
    since ORT merges Q nodes that share them back into one shared pair."""
    copy = type(tensor)()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy


def _rebuild(graph: onnx.GraphProto, expand: Callable[[onnx.NodeProto], list[onnx.NodeProto]],
             new_inits: list[onnx.TensorProto]) -> None:
    """Replace each node by ``expand(node)`` (in order: the graph stays topological
    when new nodes follow their inputs' producers) and add ``new_inits``."""
    order = [new for node in graph.node for new in expand(node)]
    del graph.node[:]
    graph.node.extend(order)
    graph.initializer.extend(new_inits)


class _FreshNames:
    """Names not yet used in a graph (node, tensor or initializer): ``base``, else
    ``base_1``, ``base_2``, ..."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used = {n.name for n in graph.node} | {i.name for i in graph.initializer} \
            | {o for n in graph.node for o in n.output}

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def dedicate_activation_qdq(model: onnx.ModelProto) -> int:
    """Give every consumer of a quantized activation its own ``Q -> DQ`` pair with
    its own scale / zero-point initializers (in place). Returns pairs added.

    An activation Q is one whose data input is not a constant. Its first
    consumer keeps the original pair; each further consumer gets a copy of the
    Q and DQ nodes (same attributes, e.g. the DQ ``axis``) reading copies of
    the scale and zero-point initializers. Q nodes whose output goes anywhere
    but DQ nodes, whose DQ output is a graph output, or whose scale/zero point
    are not initializers are left as they are.
    """
    graph = model.graph
    index = _GraphIndex.of(graph)
    constants = constant_names(model)
    fresh = _FreshNames(graph)
    added: dict[str, list[onnx.NodeProto]] = {}  # Q node name -> new nodes after it
    dropped: set[str] = set()  # DQ node names left without consumers
    new_inits: list[onnx.TensorProto] = []
    for q in graph.node:
        dqs = _activation_dqs(q, index, constants)
        if not dqs:
            continue
        targets = [(dq, node, i) for dq in dqs for node, i in index.uses.get(dq.output[0], [])]
        if len(targets) <= 1 and len(dqs) <= 1:
            continue
        kept_dq = targets[0][0] if targets else dqs[0]
        dropped |= {d.name for d in dqs if d is not kept_dq}
        new_nodes: list[onnx.NodeProto] = []
        for dq, node, i in targets[1:]:  # the first consumer keeps the original pair
            new_q, new_dq, copies = _copy_pair(q, dq, index.inits, fresh)
            node.input[i] = new_dq.output[0]
            new_nodes += [new_q, new_dq]
            new_inits += copies
        if new_nodes:
            added[q.name] = new_nodes
    if not added:
        return 0
    # New pairs go right after their Q: before any consumer, so the order stays topological.
    _rebuild(graph, lambda node: (
        [] if node.name in dropped and node.op_type == "DequantizeLinear"
        else [node, *(added.get(node.name, []) if node.op_type == "QuantizeLinear" else [])]),
        new_inits)
    return sum(len(nodes) // 2 for nodes in added.values())


def _activation_dqs(q: onnx.NodeProto, index: _GraphIndex,
                    constants: set[str]) -> list[onnx.NodeProto]:
    """The DQ nodes reading ``q`` when ``q`` is an activation Q whose pair can be
    copied: only DQs read it, none is a graph output, its scale / zero point are
    initializers. Empty otherwise."""
    if q.op_type != "QuantizeLinear" or q.input[0] in constants:
        return []
    dqs = [node for node, _ in index.uses.get(q.output[0], [])]
    if (any(d.op_type != "DequantizeLinear" for d in dqs)
            or any(d.output[0] in index.outputs for d in dqs)
            or any(name not in index.inits for name in q.input[1:] if name)):
        return []
    return dqs


def _copy_pair(q: onnx.NodeProto, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
               fresh: _FreshNames
               ) -> tuple[onnx.NodeProto, onnx.NodeProto, list[onnx.TensorProto]]:
    """A copy of the pair ``q -> dq`` under fresh names, reading fresh copies of
    ``q``'s scale / zero-point initializers (returned third)."""
    renamed, copies = {}, []
    for name in (n for n in q.input[1:] if n):
        copies.append(_copy_initializer(inits[name], fresh(f"{name}_dedicated")))
        renamed[name] = copies[-1].name
    new_q, new_dq = type(q)(), type(dq)()
    new_q.CopyFrom(q)
    new_dq.CopyFrom(dq)
    new_q.name, new_dq.name = fresh(f"{q.name}_dedicated"), fresh(f"{dq.name}_dedicated")
    new_q.output[0] = fresh(f"{q.output[0]}_dedicated")
    new_dq.output[0] = fresh(f"{dq.output[0]}_dedicated")
    new_dq.input[0] = new_q.output[0]
    for node in (new_q, new_dq):
        for i in range(1, len(node.input)):
            node.input[i] = renamed.get(node.input[i], node.input[i])
    return new_q, new_dq, copies


def quantize_add_before_relu(model: onnx.ModelProto) -> int:
    """Put a ``Q -> DQ`` pair between every ``DQ, DQ -> Add -> Relu -> Q`` (the
    residual Add of a ResNet block) so that ONNX Runtime runs the Add as
    QLinearAdd on the int8 tensors instead of dequantizing both inputs and adding
    in FP32 (in place). Returns the number of Adds changed.

    The pair reuses the value of the scale / zero point of the Q after the Relu,
    so the result is exactly the same: with zero point 0 ``Q(relu(x)) ==
    max(Q(x), 0)``, and values that the new Q saturates at the negative end
    are zeroed by the Relu anyway. The Add still has Q/DQ on both inputs (what
    TensorRT wants for its int8 Conv + residual Add fusion) and now also on its
    output, TensorRT's "quantizable Add" form.
    """
    from onnx import helper

    graph = model.graph
    inits, producer, uses, graph_outputs = _GraphIndex.of(graph)
    added: dict[str, list[onnx.NodeProto]] = {}
    new_inits = []
    for add in graph.node:
        if add.op_type != "Add" or len(add.input) != 2 or add.output[0] in graph_outputs:
            continue
        if not all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                   for i in add.input):
            continue
        after = uses.get(add.output[0], [])
        if len(after) != 1 or after[0][0].op_type != "Relu":
            continue
        relu = after[0][0]
        qs = [node for node, _ in uses.get(relu.output[0], [])]
        if (not qs or relu.output[0] in graph_outputs
                or any(q.op_type != "QuantizeLinear" for q in qs)
                or any(name not in inits for q in qs for name in q.input[1:] if name)):
            continue
        params = [[inits[name] for name in q.input[1:] if name] for q in qs]
        if any(len(p) != len(params[0])
               or not all(_same_tensor(a, b) for a, b in zip(p, params[0], strict=True))
               for p in params):
            continue  # the Relu output is quantized with different scales: leave it
        copies = [_copy_initializer(t, f"{add.output[0]}_add{k}_{t.name}")
                  for k, t in enumerate(params[0])]
        new_inits += copies
        names = [c.name for c in copies]
        q_out, dq_out = f"{add.output[0]}_QuantizeLinear_Output", f"{add.output[0]}_Dequantized"
        nodes = [helper.make_node("QuantizeLinear", [add.output[0], *names], [q_out],
                                  name=f"{add.output[0]}_QuantizeLinear"),
                 helper.make_node("DequantizeLinear", [q_out, *names], [dq_out],
                                  name=f"{add.output[0]}_DequantizeLinear")]
        relu.input[0] = dq_out
        added[add.name] = nodes
    if not added:
        return 0
    _rebuild(graph, lambda node: [node, *(added.get(node.name, [])
                                          if node.op_type == "Add" else [])], new_inits)
    return len(added)


def quantize_maxpool_inputs(model: onnx.ModelProto) -> int:
    """Run float MaxPools whose outputs only feed Q nodes on int8 (in place).

    ORT's quantizer leaves ``Relu -> MaxPool -> Q`` (the ResNet stem) with a
    float MaxPool, which ONNX Runtime runs in its NCHWc float layout between
    transposes and reorders. Each Q consumer gets its own MaxPool copy that
    reads ``DQ(Q(x))`` with that Q's scale / zero point (fresh initializer
    copies): ORT then drops the Q/DQ around each copy (int8 MaxPool). Exact,
    since max commutes with a monotone quantizer of the same scale. A MaxPool
    per consumer because ORT only drops Q/DQ around a MaxPool with one Q.
    Returns the number of MaxPool nodes replaced.
    """
    from onnx import helper

    graph = model.graph
    inits, producer, uses, graph_outputs = _GraphIndex.of(graph)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    new_inits = []
    for pool in graph.node:
        if (pool.op_type != "MaxPool" or len([o for o in pool.output if o]) != 1
                or pool.output[0] in graph_outputs):
            continue
        source = producer.get(pool.input[0])
        qs = [node for node, _ in uses.get(pool.output[0], [])]
        if (source is not None and source.op_type == "DequantizeLinear") or not qs or any(
                q.op_type != "QuantizeLinear" or any(n not in inits for n in q.input[1:] if n)
                for q in qs):
            continue
        nodes: list[onnx.NodeProto] = []
        for k, q in enumerate(qs):
            copies = [_copy_initializer(inits[name], f"{pool.output[0]}_input{k}_{name}")
                      for name in q.input[1:] if name]
            new_inits += copies
            names = [c.name for c in copies]
            tag = f"{pool.output[0]}_input{k}"
            copy_pool = type(pool)()
            copy_pool.CopyFrom(pool)
            copy_pool.name = f"{pool.name}_{k}"
            copy_pool.input[0] = f"{tag}_Dequantized"
            copy_pool.output[0] = f"{pool.output[0]}_{k}"
            nodes += [helper.make_node("QuantizeLinear", [pool.input[0], *names],
                                       [f"{tag}_Quantized"], name=f"{tag}_QuantizeLinear"),
                      helper.make_node("DequantizeLinear", [f"{tag}_Quantized", *names],
                                       [f"{tag}_Dequantized"], name=f"{tag}_DequantizeLinear"),
                      copy_pool]
            q.input[0] = copy_pool.output[0]
        replaced[pool.name] = nodes
    if not replaced:
        return 0
    _rebuild(graph, lambda node: (replaced[node.name] if node.op_type == "MaxPool"
                                  and node.name in replaced else [node]), new_inits)
    return len(replaced)


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    """Same dtype, shape and values."""
    from onnx import numpy_helper

    x, y = numpy_helper.to_array(a), numpy_helper.to_array(b)
    return x.dtype == y.dtype and x.shape == y.shape and bool(np.all(x == y))


def ort_optimized_graph(model: onnx.ModelProto | str | os.PathLike[str]) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``model`` (QDQ fusions applied).

    Optimization level EXTENDED: every QDQ fusion, but not the hardware-specific
    NCHWc layout pass (level ALL), so the result reads the same on any x86 CPU.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="detr-edge-ortopt.") as tmp:
        source = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.intra_op_num_threads = 1
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def unfused_weight_ops(optimized: onnx.ModelProto) -> list[str]:
    """Names of float Conv/Gemm/MatMul in an ORT-optimized graph whose weight
    (input 1) is a DequantizeLinear of a constant: INT8 weight ops that ONNX
    Runtime did *not* fuse into an integer kernel (it dequantizes the weight and
    runs them in FP32). Empty = every quantized weight op runs as integer math.
    Activation x activation MatMuls (attention) are not weight ops."""
    producer = producers(optimized.graph)
    constants = {i.name for i in optimized.graph.initializer}
    out = []
    for node in optimized.graph.node:
        if node.op_type not in FLOAT_WEIGHT_OPS or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in constants:
            out.append(node.name)
    return out


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """``{op type: count}``, most frequent first."""
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())
