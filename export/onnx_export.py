"""Export a DETR checkpoint to ONNX (FP32 or FP16) with a parity report.

Two exporters, chosen by ``ExportConfig.exporter`` (``--exporter``):

- ``torchscript`` (default): ``torch.onnx.export(..., dynamo=False)``, which
  traces :class:`export.export_wrapper.ExportWrapper`. Deprecated in PyTorch
  but still present in 2.14; fast, and the wrapper's graph is already static
  apart from the batch axis, so tracing gives a clean graph.
- ``dynamo``: ``torch.export`` + onnxscript (``export/onnx_dynamo.py``), the
  PyTorch default since 2.9; opset >= 18.

docs/ARCHITECTURE.md ("ONNX exporters") compares them and says why the
default is what it is. Both paths go through the same steps:
export -> ``onnx.checker`` -> onnxslim (constant folding; metadata kept) ->
full check -> verify (no CumSum, LayerNormalization present, static shapes
except the batch) -> metadata -> [FP16 conversion] -> parity vs PyTorch on the
same preprocessed tensors -> atomic write of the model and the JSON report.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta
from runtime.preprocess import BACKBONE_STRIDE
from runtime.version import package_version

if TYPE_CHECKING:
    import onnx
    import torch

    from export.fp16 import FP16Report
    from export.fused_preprocess import FusedParity
    from export.parity import ParityReport

MIN_OPSET = 17  # LayerNormalization is a single node from opset 17 (TensorRT#2781)
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}  # dynamo: export.onnx_dynamo.DYNAMO_MIN_OPSET
EXPORTER_NAMES = {"torchscript": "torch.onnx TorchScript (dynamo=False) + onnxslim",
                  "dynamo": "torch.onnx dynamo (torch.export) + onnxscript optimizer + onnxslim"}


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str  # detr-edge / official / HF checkpoint readable by detr.load_checkpoint
    out: str  # ONNX file to write
    height: int = 800  # fixed input canvas height (pixels)
    width: int = 800  # fixed input canvas width (pixels)
    batch_size: int = 1  # fixed batch size baked into the graph (ignored with dynamic_batch)
    dynamic_batch: bool = False  # batch axis left symbolic ('batch')
    # 'mask' input [B,H,W] bool (True = padding). None = as the checkpoint was trained:
    # with the mask when its training batches were padded (detr.training_resize).
    with_mask: bool | None = None
    opset: int | None = None  # None = the exporter's default (DEFAULT_OPSET); >= 17 always
    exporter: str = "torchscript"  # "torchscript" | "dynamo" (see module docstring)
    precision: str = "fp32"  # "fp32" | "fp16"
    calib_data: str | None = None  # images for parity (and FP16 ranges); None = random inputs
    calib_images: int = 8  # how many images from calib_data
    report: str | None = None  # JSON report path (None = only printed)
    fused_source: tuple[int, int] | None = None  # (Hs, Ws): uint8 NHWC frames, in-graph preprocess

    def validate(self) -> None:
        if self.height <= 0 or self.width <= 0 or self.height % BACKBONE_STRIDE or self.width % BACKBONE_STRIDE:
            raise InputError("--height/--width", f"{self.height}x{self.width} must be positive "
                             f"multiples of {BACKBONE_STRIDE} (the backbone stride)")
        if self.batch_size <= 0:
            raise InputError("--batch", f"must be positive, got {self.batch_size}")
        if self.exporter not in EXPORTERS:
            raise InputError("--exporter", f"must be one of {', '.join(EXPORTERS)}, "
                             f"got {self.exporter!r}")
        if self.opset is not None and self.opset < MIN_OPSET:
            raise InputError("--opset", f"{self.opset} < {MIN_OPSET}: LayerNorm would be "
                             "decomposed into ReduceMean/Pow chains that overflow in FP16 "
                             "(TensorRT#2781)")
        if self.exporter == "dynamo":
            from export.onnx_dynamo import check_dynamo_opset

            check_dynamo_opset(self.resolved_opset)
        if self.precision not in ("fp32", "fp16"):
            raise InputError("--precision", f"must be fp32 or fp16 (int8: use quantize), "
                             f"got {self.precision!r}")
        if self.calib_images <= 0:
            raise InputError("--calib-images", f"must be positive, got {self.calib_images}")

    @property
    def resolved_opset(self) -> int:
        """The opset written: ``opset``, or the exporter's default."""
        return self.opset if self.opset is not None else DEFAULT_OPSET[self.exporter]


@dataclass
class ExportResult:
    path: str
    meta: ModelMeta
    parity: ParityReport
    fp16: FP16Report | None = None
    fp32_parity: ParityReport | None = None  # FP32 graph parity when the output is FP16
    graph_ops: dict[str, int] = field(default_factory=dict)  # op type -> count in the file
    fused: FusedParity | None = None  # --fused-preprocess: fused vs numpy preprocessing

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "meta": json.loads(self.meta.to_json()),
                               "graph_ops": self.graph_ops, "parity": self.parity.to_dict()}
        if self.fp32_parity is not None:
            out["fp32_parity"] = self.fp32_parity.to_dict()
        if self.fp16 is not None:
            out["fp16"] = self.fp16.to_dict()
        if self.fused is not None:
            out["fused_preprocess"] = self.fused.to_dict()
        return out

    def format(self) -> str:
        from runtime.fused import expects_mask_input

        mask = "" if not self.meta.with_mask else (
            ", mask input" if expects_mask_input(self.meta) else ", mask made in the graph")
        lines = [(f"wrote {self.path} ({self.meta.precision}, batch "
                  f"{self.meta.batch_size or 'dynamic'}, {self.meta.input_height}x"
                  f"{self.meta.input_width}{mask})")]
        if self.fp32_parity is not None:
            lines.append(self.fp32_parity.format())
        if self.fp16 is not None:
            lines.append(self.fp16.format())
        lines.append(self.parity.format())
        if self.fused is not None:
            lines.append(self.fused.format())
        return "\n".join(lines)


def trace_to_onnx(model: torch.nn.Module, height: int, width: int, batch_size: int | None,
                  with_mask: bool, opset: int | None = None,
                  exporter: str = "torchscript") -> onnx.ModelProto:
    """Export ``model`` through :class:`ExportWrapper` with ``exporter``, then
    check, simplify and verify.

    ``batch_size=None`` leaves the batch axis symbolic ('batch'); ``opset=None``
    takes the exporter's default. Returns the simplified ONNX model (no metadata yet).
    """
    import onnx
    import onnxslim
    import torch

    from export.export_wrapper import ExportWrapper

    if exporter not in EXPORTERS:
        raise InputError("--exporter", f"must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    wrapper = ExportWrapper(model.eval(), height, width, with_mask).eval()
    # Export with batch 2 when dynamic so no op specialises on a size-1 batch.
    trace_batch = batch_size or 2
    param = next(model.parameters())
    images = torch.randn(trace_batch, 3, height, width, dtype=param.dtype, device=param.device)
    args: tuple[torch.Tensor, ...] = (images,)
    input_names = ["images"]
    if with_mask:
        mask = torch.zeros(trace_batch, height, width, dtype=torch.bool, device=param.device)
        mask[:, :, width // 2:] = True
        args = (images, mask)
        input_names.append("mask")
    if exporter == "dynamo":
        from export.onnx_dynamo import dynamo_export

        graph = dynamo_export(wrapper, args, input_names, batch_size is None, opset)
    else:
        graph = _torchscript_export(wrapper, args, input_names, batch_size is None, opset)
    onnx.checker.check_model(graph)  # structure; the full check (shapes/types) runs below
    graph = onnxslim.slim(graph)
    # Shape inference can leave the query axis symbolic through the mask branch
    # (Resize of the mask); the output shapes are known, so state them.
    with torch.no_grad():
        logits, boxes = wrapper(*args)
    for value, shape in zip(graph.graph.output, (logits.shape, boxes.shape)):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis > 0 or batch_size is not None:
                dim.Clear()
                dim.dim_value = int(shape[axis])
    onnx.checker.check_model(graph, full_check=True)
    verify_graph(graph, batch_size)
    return graph


def _torchscript_export(wrapper: torch.nn.Module, args: tuple[torch.Tensor, ...],
                        input_names: list[str], dynamic_batch: bool,
                        opset: int) -> onnx.ModelProto:
    """``torch.onnx.export(..., dynamo=False)`` of ``wrapper(*args)`` -> ONNX model."""
    import onnx
    import torch

    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in input_names + ["logits", "boxes"]}
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Choosing this exporter is deliberate (module docstring); torch's
            # deprecation notice would only repeat it on every export.
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript",
                                    category=DeprecationWarning)
            torch.onnx.export(wrapper, args, buffer,  # type: ignore[arg-type]  # file-like ok
                              input_names=input_names,
                              output_names=["logits", "boxes"], opset_version=opset,
                              dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True)
    except (ValueError, RuntimeError) as exc:
        raise InputError("--opset", f"torch.onnx.export failed at opset {opset}: "
                         f"{str(exc)[:300]}") from exc
    return onnx.load_from_string(buffer.getvalue())


def verify_graph(graph: onnx.ModelProto, batch_size: int | None, where: str = "exported graph"
                 ) -> None:
    """Exporter invariants; a violation is a bug worth a loud error."""
    from export.check_onnx import check_static_shapes

    ops = {n.op_type for n in graph.graph.node}
    if "CumSum" in ops:
        raise ModelFormatError(where, "contains CumSum (wrong on TensorRT 10.8-10.11, "
                               "onnx-tensorrt#1034)")
    if "LayerNormalization" not in ops:
        raise ModelFormatError(where, "LayerNorm was not exported as LayerNormalization")
    static = check_static_shapes(graph)
    if static.status != "PASS":
        raise ModelFormatError(where, static.detail)
    for value in list(graph.graph.input) + list(graph.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if batch_size is None and not dim0.dim_param:
            raise ModelFormatError(where, f"{value.name}: batch axis was specialised to "
                                   f"{dim0.dim_value} although a dynamic batch was asked")
        if batch_size is not None and dim0.dim_value != batch_size:
            raise ModelFormatError(where, f"{value.name}: batch axis is not {batch_size}")


def op_counts(graph: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def export_detr(model: torch.nn.Module, meta: ModelMeta, config: ExportConfig) -> ExportResult:
    """Export an in-memory DETR (``model(images[, mask])`` contract) described by
    ``meta`` (class names, label map, preset; size/batch/mask/precision fields are
    set from ``config``) and write ``config.out`` (+ ``config.report``)."""
    from export.fp16 import convert_to_fp16
    from export.onnx_meta import write_meta
    from export.parity import FP32_TOLERANCE, build_cases, parity_report, torch_forward

    config.validate()
    batch = None if config.dynamic_batch else config.batch_size
    with_mask = bool(config.with_mask)
    meta = meta.replace(input_height=config.height, input_width=config.width, batch_size=batch,
                        with_mask=with_mask, precision="fp32",
                        exporter_version=package_version(),
                        extra={**meta.extra, "opset": config.resolved_opset,
                               "exporter": EXPORTER_NAMES[config.exporter]})
    meta.validate("export metadata")
    graph = trace_to_onnx(model, config.height, config.width, batch, with_mask,
                          config.resolved_opset, config.exporter)
    write_meta(graph, meta)
    cases = build_cases(meta, config.calib_data, config.calib_images)
    forward = torch_forward(model, with_mask)
    parity = parity_report(forward, graph, cases, "fp32", FP32_TOLERANCE)
    result = ExportResult(config.out, meta, parity)
    if config.precision == "fp16":
        calib = [feed for _, _, feed, _ in cases]
        fp16_graph, fp16_report = convert_to_fp16(graph, calib)
        write_meta(fp16_graph, meta.replace(precision="fp16"))
        result = ExportResult(config.out, meta.replace(precision="fp16"),
                              parity_report(forward, fp16_graph, cases, "fp16", None),
                              fp16=fp16_report, fp32_parity=parity)
        graph = fp16_graph
    if config.fused_source is not None:
        from export.fused_preprocess import fuse_with_check

        graph, result.meta, result.fused = fuse_with_check(graph, result.meta, config)
    result.graph_ops = op_counts(graph)
    atomic_write_bytes(config.out, graph.SerializeToString())
    if config.report:
        atomic_write_text(config.report, json.dumps(result.to_dict(), indent=2, default=float))
    return result


def export_onnx(config: ExportConfig) -> ExportResult:
    """Load ``config.checkpoint`` with ``detr.load_checkpoint`` and export it.

    The checkpoint's training resize rule (``detr.training_resize``) decides the
    default mask input (padded training -> mask) and, for a mask export, is
    recorded in the metadata so the runtime resizes each image as training did
    (inside the canvas). A maskless export fits each image to the whole canvas,
    as a model that never saw padding expects.
    """
    from detr import load_checkpoint
    from detr.training_resize import from_checkpoint

    config.validate()
    if not os.path.isfile(config.checkpoint):
        raise InputError(config.checkpoint, "checkpoint not found")
    loaded = load_checkpoint(config.checkpoint)
    rule = from_checkpoint(loaded.raw)
    if config.with_mask is None:
        config = dataclasses.replace(config, with_mask=rule.padded)
    meta = ModelMeta(preset=loaded.preset, input_height=config.height, input_width=config.width,
                     class_names=list(loaded.class_names), label_map=list(loaded.label_map),
                     resize_shorter=rule.shorter if config.with_mask else None,
                     resize_max=rule.max_size if config.with_mask else None,
                     extra={"checkpoint": os.path.basename(config.checkpoint),
                            "training_resize": rule.to_dict()})
    return export_detr(loaded.model.eval(), meta, config)
