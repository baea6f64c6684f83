"""The two INT8 Q/DQ formats of ``detr-edge quantize --target`` (names in
``runtime.metadata.INT8_FORMATS``), and the ORT call that inserts their Q/DQ nodes.

``tensorrt`` (default): TensorRT's explicit-quantization format. Symmetric int8
activations and weights (zero point 0), per-channel weights, Q/DQ on the inputs
of weight-bearing ops only; laid out afterwards by
``export.int8.ort_fusion_layout`` so that ONNX Runtime's CPU provider also runs
it on integer kernels.

``cpu``: ONNX Runtime's own CPU format, for deployments that never see TensorRT.
Activations are uint8 with a zero point (asymmetric); weights stay symmetric
per-channel int8. The point is the ReLU: a ReLU output calibrated asymmetrically
has range [0, max], so its zero point is uint8 0 and the quantizer's clamp *is*
the ReLU. ONNX Runtime then drops the ReLU, and with the residual Adds and the
stem MaxPool also quantized, the whole ResNet backbone runs in the integer
domain. The stem conv is rewritten into its exact space-to-depth form
(``export.int8.stem_space_to_depth``), which integer kernels run faster. The
symmetric int8 format cannot do that. There, zero point 0 sits mid-range, so
every ReLU stays a float ``DequantizeLinear -> Relu -> QuantizeLinear`` detour
on the full feature map; on DETR-R50 at 800x1066 that detour is about a quarter
of the INT8 run time on ONNX Runtime CPU. TensorRT rejects the cpu format (uint8
Q/DQ, nonzero zero points), and ``export.engine_builder`` says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.int8.config import QuantizeConfig, weight_bits
from export.int8.ort_fusion_layout import apply_ort_fusion_layout
from export.int8.stem_space_to_depth import stem_to_space_to_depth
from export.onnx_graph import constant_names, producers
from runtime.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import onnx

# Ops the cpu format quantizes after a quantized Conv (integer on ORT CPU: the ReLU is
# folded into the zero point, Add becomes QLinearAdd, MaxPool runs on uint8).
CONV_STAGE_OPS = ("Relu", "Add", "MaxPool")


def conv_stage_nodes(model: onnx.ModelProto, convs: set[str]) -> list[str]:
    """Relu/Add/MaxPool nodes whose every non-constant input comes from a Conv in
    ``convs`` or from another such node (the ResNet body), in graph order.

    Adds and ReLUs in the transformer are not included: their neighbours
    (LayerNorm, attention) are float, so quantizing them would only add
    conversions.
    """
    constants = constant_names(model)
    producer = producers(model.graph)
    stage: set[str] = set()
    order = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type not in CONV_STAGE_OPS:
            continue
        inputs = [producer.get(name) for name in node.input if name and name not in constants]
        if inputs and all(p is not None and (p.name in convs or p.name in stage) for p in inputs):
            stage.add(node.name)
            order.append(node.name)
    return order


def quantize_nodes(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                   nodes: Sequence[str], reader: Any, cache_path: str | os.PathLike[str],
                   config: QuantizeConfig) -> onnx.ModelProto:
    """ORT ``quantize_static`` of exactly ``nodes`` (Conv/MatMul/Gemm names) into the
    Q/DQ format of ``config.target``; writes ``out_path`` and returns the model."""
    import onnx

    cpu = config.target == "cpu"
    with _quantizer_input(fp32_path, out_path, nodes, cpu) as (source, names, chosen):
        # ORT reads an empty nodes_to_quantize as "all nodes": exclude the rest explicitly.
        exclude = sorted(set(names) - set(chosen))
        _quantize_static(source, out_path, reader, cache_path, chosen, exclude, config)
    out = onnx.load(os.fspath(out_path))
    # Layout for ONNX Runtime's integer kernels with the same meaning for TensorRT
    # (export.int8.ort_fusion_layout): int8 MaxPool, QLinearAdd, one Q/DQ pair per
    # consumer. The cpu format needs none of it: ORT's quantizer lays uint8 graphs out
    # for ORT.
    if not cpu and any(apply_ort_fusion_layout(out, config.quantize_add).values()):
        atomic_write_bytes(out_path, out.SerializeToString())
    return out


@contextlib.contextmanager
def _quantizer_input(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                     nodes: Sequence[str], cpu: bool
                     ) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``(model file to quantize, its node names, nodes to quantize)``. For the cpu
    format: the Relu/Add/MaxPool of the conv stages join ``nodes``, and the stem is
    rewritten into its space-to-depth form in a file next to ``out_path`` (exact;
    the stem keeps its node name), removed on exit."""
    import onnx

    model = onnx.load(os.fspath(fp32_path), load_external_data=False)
    chosen = list(nodes)
    source = Path(fp32_path)
    if cpu:
        wanted = set(nodes)
        convs = {n.name for n in model.graph.node if n.op_type == "Conv" and n.name in wanted}
        chosen += conv_stage_nodes(model, convs)
        if stem_to_space_to_depth(model):
            source = Path(out_path).with_suffix(".s2d.onnx")
            onnx.save(model, os.fspath(source))
    try:
        yield source, [n.name for n in model.graph.node], chosen
    finally:
        if source != Path(fp32_path):
            source.unlink(missing_ok=True)


def _quantize_static(source: Path, out_path: str | os.PathLike[str], reader: Any,
                     cache_path: str | os.PathLike[str], chosen: list[str], exclude: list[str],
                     config: QuantizeConfig) -> None:
    """ORT's ``quantize_static`` with the format's options, its log and stdout chatter
    silenced."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    cpu = config.target == "cpu"
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    extra = {
        # TensorRT only does symmetric INT8 (zero point 0); the cpu format uses the zero
        # point to fold each ReLU into its quantizer (see the module docstring).
        "ActivationSymmetric": not cpu,
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT wants FP32 bias, not an int32 Q/DQ bias
        "MatMulConstBOnly": not config.quantize_attention,
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # [K, N] weights: N = out channels
        "CalibPercentile": config.percentile,
    }
    op_types = ["Conv", "MatMul", "Gemm"] + (list(CONV_STAGE_OPS) if cpu else [])
    # ORT's quantizer logs a "consider pre-processing" warning on the root logger
    # for every call (the symbolic shape pre-pass does not apply to these graphs).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # The entropy / percentile calibrators print their progress to stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(os.fspath(source), os.fspath(out_path), reader,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                            per_channel=True,
                            activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=chosen,
                            nodes_to_exclude=exclude,
                            calibrate_method=method, extra_options=extra,
                            reduce_range=weight_bits(config) == 7,  # weights only
                            calibration_cache_path=os.fspath(cache_path))
    finally:
        root.setLevel(level)
