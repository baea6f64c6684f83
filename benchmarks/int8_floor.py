"""How low an INT8 / FP32 latency ratio this CPU allows a DETR model: the
backbone floor.

DETR's time on ONNX Runtime CPU splits into the backbone (convolutions, up to
``input_proj``) and the rest (transformer, heads, position encoding, mask
resize). INT8 pays in the convolutions only: at DETR-tiny's token counts
(16-25 memory tokens, 10-100 queries) ORT's QGemm is no faster than the FP32
Gemm, so the quantizer's speed fallback keeps the transformer FP32 when that
is faster (``export.int8.speed_fallback``). The lowest ratio reachable is then
the INT8 backbone followed by the FP32 rest:

    floor = (t_int8_backbone + t_fp32_full - t_fp32_backbone) / t_fp32_full

Four sessions are timed together in blocks (:func:`benchmarks.timing.time_interleaved`,
as ``time_onnx_models``): the full FP32 and INT8 models and their backbones,
cut out of the same files at ``input_proj``'s output (after its Q/DQ pair in
an INT8 graph). Each repeat gives one ratio, one floor and one backbone ratio;
medians and ranges over repeats are the figures and their noise. The backbone
ratio is what ORT's INT8 convolution kernels give on this CPU (AVX2 without
VNNI: ~2x at most, ``vpmaddubsw``); a speed target below the floor needs faster
INT8 kernels (VNNI, ARM dot product, TensorRT), not another Q/DQ layout.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import onnx_cpu_session, session_call, time_interleaved
from runtime.errors import InputError


@dataclass(frozen=True)
class FloorSpread:
    """Per-repeat figures of one INT8 model against its FP32 model."""

    name: str
    ratios: tuple[float, ...]  # full INT8 / full FP32
    floors: tuple[float, ...]  # (INT8 backbone + FP32 rest) / full FP32
    backbone_ratios: tuple[float, ...]  # INT8 backbone / FP32 backbone
    fp32_ms: float  # median full FP32 ms over repeats
    rest_ms: float  # median FP32 non-backbone ms over repeats
    int8_convs: int  # backbone Conv nodes with quantized weights
    convs: int  # backbone Conv nodes

    def line(self) -> str:
        def fig(values: tuple[float, ...]) -> str:
            return f"{np.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"
        return (f"{self.name}: {fig(self.ratios)} FP32; backbone floor {fig(self.floors)}: "
                f"backbone {fig(self.backbone_ratios)} with {self.int8_convs}/{self.convs} "
                f"convs INT8, FP32 rest {self.rest_ms:.1f} of {self.fp32_ms:.1f} ms "
                f"({len(self.ratios)} repeats)")


def backbone_cut(model: Any) -> str:
    """The tensor the transformer takes from the backbone: ``input_proj``'s Conv
    output, or the output of the Q -> DQ pair that directly follows it. Where no
    node is named after ``input_proj`` (generic exporter names), DETR's last Conv
    in graph order is it: the heads are Gemm/MatMul."""
    from export.int8.nodes import block_of
    from export.onnx_graph import consumers

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    named = [n for n in convs if block_of(model, n) == "input_proj"]
    if len(named) > 1 or not convs:
        raise InputError("onnx", f"expected one input_proj Conv, found {len(named)} "
                         f"named so among {len(convs)} Conv nodes")
    cut = (named or convs)[-1].output[0]
    users = consumers(model.graph)
    q = users.get(cut, [])
    if len(q) == 1 and q[0][0].op_type == "QuantizeLinear":
        dq = users.get(q[0][0].output[0], [])
        if len(dq) == 1 and dq[0][0].op_type == "DequantizeLinear":
            cut = dq[0][0].output[0]
    return cut


def backbone_model(model: Any) -> tuple[Any, int, int]:
    """(backbone ONNX model: ``images`` -> :func:`backbone_cut`, INT8 convs, convs)."""
    import onnx

    from export.onnx_graph import producers

    cut = backbone_cut(model)
    # the extractor types its outputs from value_info, which Q/DQ graphs lack
    typed = onnx.shape_inference.infer_shapes(model)
    sub = onnx.utils.Extractor(typed).extract_model(["images"], [cut])
    made_by = producers(sub.graph)
    convs = [n for n in sub.graph.node if n.op_type == "Conv"]
    int8 = sum(1 for n in convs if getattr(made_by.get(n.input[1]), "op_type", "")
               == "DequantizeLinear")
    return sub, int8, len(convs)


def floor_spread(fp32: Path, int8: Sequence[Path], feed: dict[str, np.ndarray], *,
                 repeats: int = 3, runs: int = 20, threads: int | None = None,
                 settle: int = 2, block: int = 4) -> list[FloorSpread]:
    """:class:`FloorSpread` of each INT8 model; ``feed`` is the full models' batch-1
    input (``images`` float32 [1,3,H,W], ``mask`` bool [1,H,W] if the model has one)."""
    import onnx

    images = {"images": feed["images"]}
    out = []
    with tempfile.TemporaryDirectory(prefix="detr-edge-floor.") as tmp:
        fp32_bb, _, _ = backbone_model(onnx.load(os.fspath(fp32)))
        onnx.save(fp32_bb, f"{tmp}/fp32_bb.onnx")
        for path in int8:
            int8_bb, n_int8, n_convs = backbone_model(onnx.load(os.fspath(path)))
            onnx.save(int8_bb, f"{tmp}/int8_bb.onnx")
            sessions = {"fp32": (fp32, feed), "int8": (path, feed),
                        "fp32_bb": (Path(tmp, "fp32_bb.onnx"), images),
                        "int8_bb": (Path(tmp, "int8_bb.onnx"), images)}
            per: dict[str, list[float]] = {k: [] for k in ("ratio", "floor", "bb", "fp32", "rest")}
            for _ in range(repeats):
                t = _time(sessions, runs=runs, threads=threads, settle=settle, block=block)
                rest = t["fp32"] - t["fp32_bb"]
                per["ratio"].append(t["int8"] / t["fp32"])
                per["floor"].append((t["int8_bb"] + rest) / t["fp32"])
                per["bb"].append(t["int8_bb"] / t["fp32_bb"])
                per["fp32"].append(t["fp32"])
                per["rest"].append(rest)
            out.append(FloorSpread(path.name, tuple(per["ratio"]), tuple(per["floor"]),
                                   tuple(per["bb"]), float(np.median(per["fp32"])),
                                   float(np.median(per["rest"])), n_int8, n_convs))
    return out


def _time(sessions: dict[str, tuple[Path, dict[str, np.ndarray]]], *, runs: int,
          threads: int | None, settle: int, block: int) -> dict[str, float]:
    """Median ms of each session, timed together in blocks (a fresh session each)."""
    calls = {name: session_call(onnx_cpu_session(path, threads), feed)
             for name, (path, feed) in sessions.items()}
    stats = time_interleaved(calls, runs=runs, warmup=3, settle=settle, block=block)
    return {name: s.median_ms for name, s in stats.items()}
