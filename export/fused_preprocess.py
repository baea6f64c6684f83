"""In-graph preprocessing (``export-onnx --fused-preprocess HxW``).

The exported graph gets a new ``images`` input, uint8 ``[B, Hs, Ws, 3]`` RGB frames
of one fixed source size, and does what ``runtime.preprocess`` does on the CPU:
keep-ratio bilinear resize into the canvas (to the size ``runtime.preprocess.target_size``
picks), ``(x / 255 - mean) / std``, zero padding bottom/right, and for a with-mask model
the mask, a constant for one source size. On a GPU (TensorRT, CUDA) the runtime then only copies frames: the
per-pixel float work of a 1080p frame leaves the CPU, which on Jetson-class boards
takes longer than the model itself.

The resize is exactly PIL's. A separable resize is two matrix products,
``canvas = Ry @ frame @ Rx^T`` per channel, with ``Ry`` [h, Hs] and ``Rx`` [w, Ws]
fixed by the source and canvas sizes. Their coefficients are taken from PIL itself
(an identity image resized with the same filter as ``runtime.preprocess``), so
PIL's antialiasing of downscales (support widened by the scale factor) is kept,
which ONNX's Resize cannot express before opset 18 nor TensorRT at all. Every op
(Cast, Reshape, MatMul, Transpose, Mul, Add, Pad; Shape, Slice, Concat, Expand for
the mask) is in TensorRT's parser table.
The one difference: PIL rounds to uint8 between its horizontal and vertical
passes, the graph keeps floats (<= 0.5 grey level).

Cost: the first product runs on the full frame. 1080p into 128x128 is 0.50 G
multiply-adds, into 800x1066 (600x1066 resized) 7.4 G. That is why the graph is slower
than the numpy path on a CPU: PIL's filter touches only the nonzero taps of each output
pixel (29 of 1080 rows for 1080 -> 72, 4 for 1080 -> 600), the dense matrices multiply
every zero too (38x / 350x more work), and the frame is first cast to float32 (4x the
bytes). ORT CPU profile at 1080p -> 128x128: first MatMul ~110 ms, Cast ~35 ms, all else
< 3 ms (load average ~8 on 2 cores). A banded form (Gather of each window + batched
MatMul, 38x fewer multiply-adds) ran slower still on ORT CPU (150 vs 130 ms): tiny
batched products and gathered copies are memory-bound. On a GPU the dense products are
what tensor cores do best, which is where this graph is meant to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import InputError
from runtime.fused import FUSED_KEY
from runtime.metadata import ModelMeta
from runtime.preprocess import target_size

if TYPE_CHECKING:
    import onnx

PREFIX = "fused_pre/"  # names of the preprocessing nodes and constants
CANVAS = PREFIX + "canvas"  # the normalised canvas fed to the original graph


def resize_matrices(src_h: int, src_w: int, dst_h: int, dst_w: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """PIL-bilinear resize as matrices: ``Ry`` float32 [dst_h, src_h], ``Rx^T`` float32
    [src_w, dst_w], so that ``resized = Ry @ image @ Rx^T`` per channel."""
    from PIL import Image

    def one_axis(src: int, dst: int) -> np.ndarray:  # [src, dst]: row i = response to e_i
        if src == dst:
            return np.eye(src, dtype=np.float32)
        eye = Image.fromarray(np.eye(src, dtype=np.float32), mode="F")
        # Resizing only the width applies the horizontal filter to every row e_i.
        return np.asarray(eye.resize((dst, src), Image.Resampling.BILINEAR), dtype=np.float32)

    return one_axis(src_h, dst_h).T.copy(), one_axis(src_w, dst_w)


def preprocess_nodes(meta: ModelMeta, source_h: int, source_w: int, out_name: str = CANVAS,
                     out_type: int | None = None) -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) turning ``images`` uint8 [B, Hs, Ws, 3] into ``out_name``
    float [B, 3, H, W] (the canvas ``runtime.preprocess`` would build)."""
    from onnx import TensorProto, helper, numpy_helper

    H, W = meta.input_height, meta.input_width  # canvas
    h, w, _ = target_size(source_h, source_w, meta)  # the size runtime.preprocess picks
    ry, rxt = resize_matrices(source_h, source_w, h, w)
    std = np.asarray(meta.std, np.float32)
    consts = {
        "ry": ry, "rxt": rxt,
        "scale": (1.0 / (255.0 * std)).reshape(1, 3, 1, 1).astype(np.float32),
        "bias": (-np.asarray(meta.mean, np.float32) / std).reshape(1, 3, 1, 1),
        "rows": np.array([0, source_h, source_w * 3], np.int64),  # 0 = keep the batch dim
        "rows_back": np.array([0, h, source_w, 3], np.int64),
        "pads": np.array([0, 0, 0, 0, 0, 0, H - h, W - w], np.int64),
        "zero": np.array(0.0, np.float32),
    }
    inits = [numpy_helper.from_array(v, PREFIX + k) for k, v in consts.items()]
    p = PREFIX
    # Vertical pass first, on [B, Hs, Ws*3] straight from NHWC (no transpose of the full
    # frame); it shrinks the frame before the transpose and the horizontal pass.
    nodes = [
        helper.make_node("Cast", ["images"], [p + "f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", [p + "f", p + "rows"], [p + "rows_f"]),
        helper.make_node("MatMul", [p + "ry", p + "rows_f"], [p + "v"]),  # [B, h, Ws*3]
        helper.make_node("Reshape", [p + "v", p + "rows_back"], [p + "v4"]),  # [B, h, Ws, 3]
        helper.make_node("Transpose", [p + "v4"], [p + "v_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("MatMul", [p + "v_nchw", p + "rxt"], [p + "resized"]),  # [B,3,h,w]
        helper.make_node("Mul", [p + "resized", p + "scale"], [p + "scaled"]),
        helper.make_node("Add", [p + "scaled", p + "bias"], [p + "normalised"]),
        helper.make_node("Pad", [p + "normalised", p + "pads", p + "zero"],
                         [out_name if out_type in (None, TensorProto.FLOAT) else p + "padded"],
                         mode="constant"),
    ]
    if out_type not in (None, TensorProto.FLOAT):
        nodes.append(helper.make_node("Cast", [p + "padded"], [out_name], to=out_type))
    return nodes, inits


def preprocess_graph(meta: ModelMeta, source_h: int, source_w: int, opset: int = 17
                     ) -> onnx.ModelProto:
    """The preprocessing alone as a model: ``images`` uint8 [B, Hs, Ws, 3] -> ``canvas``
    float32 [B, 3, H, W] (tests and the preprocessing benchmark)."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inits = preprocess_nodes(meta, source_h, source_w, out_name="canvas")
    graph = helper.make_graph(
        nodes, "detr_edge_preprocess",
        [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                       ["batch", source_h, source_w, 3])],
        [helper.make_tensor_value_info("canvas", TensorProto.FLOAT,
                                       ["batch", 3, meta.input_height, meta.input_width])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def mask_nodes(meta: ModelMeta, source_h: int, source_w: int, mask_type: int
               ) -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) making ``mask`` [B, H, W] (True = padding) from ``images``:
    one source size gives one valid region ``[:h, :w]``, so the mask is a constant
    [1, H, W] expanded to the batch (Shape, Slice, Concat, Expand: TensorRT parses them)."""
    from onnx import TensorProto, helper, numpy_helper

    H, W = meta.input_height, meta.input_width
    h, w, _ = target_size(source_h, source_w, meta)
    const = np.ones((1, H, W), dtype=bool)
    const[:, :h, :w] = False
    p = PREFIX
    inits = [numpy_helper.from_array(const, p + "mask_const"),
             numpy_helper.from_array(np.array([0], np.int64), p + "zero_i"),
             numpy_helper.from_array(np.array([1], np.int64), p + "one_i"),
             numpy_helper.from_array(np.array([H, W], np.int64), p + "canvas_hw")]
    expanded = "mask" if mask_type == TensorProto.BOOL else p + "mask_bool"
    nodes = [
        helper.make_node("Shape", ["images"], [p + "in_shape"]),
        helper.make_node("Slice", [p + "in_shape", p + "zero_i", p + "one_i"], [p + "batch"]),
        helper.make_node("Concat", [p + "batch", p + "canvas_hw"], [p + "mask_shape"], axis=0),
        helper.make_node("Expand", [p + "mask_const", p + "mask_shape"], [expanded]),
    ]
    if mask_type != TensorProto.BOOL:  # the graph declared another mask type: cast to it
        nodes.append(helper.make_node("Cast", [expanded], ["mask"], to=mask_type))
    return nodes, inits


def fuse_preprocess(model: onnx.ModelProto, meta: ModelMeta, source_h: int, source_w: int
                    ) -> tuple[onnx.ModelProto, ModelMeta]:
    """Prepend the preprocessing to an exported DETR graph (FP32, FP16 or INT8 Q/DQ).

    Returns the new model (input ``images`` uint8 [B, Hs, Ws, 3], same outputs) and its
    metadata with ``extra["fused_preprocess"]``. A ``mask`` input (``--with-mask``)
    becomes a constant inside the graph (:func:`mask_nodes`): with one source size
    every frame has the same padding, so the fused graph has ``images`` only.
    """
    import onnx
    from onnx import TensorProto, helper

    if source_h <= 0 or source_w <= 0:
        raise InputError("--fused-preprocess", f"source size {source_h}x{source_w}")
    old = next(i for i in model.graph.input if i.name == "images")
    batch_dim = old.type.tensor_type.shape.dim[0]
    batch: int | str = batch_dim.dim_param or batch_dim.dim_value
    nodes, inits = preprocess_nodes(meta, source_h, source_w,
                                    out_type=old.type.tensor_type.elem_type)
    mask = next((i for i in model.graph.input if i.name == "mask"), None)
    if mask is not None:
        more_nodes, more_inits = mask_nodes(meta, source_h, source_w,
                                            mask.type.tensor_type.elem_type)
        nodes, inits = nodes + more_nodes, inits + more_inits
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    g = fused.graph
    for node in g.node:  # the original graph now reads the canvas
        for k, name in enumerate(node.input):
            if name == "images":
                node.input[k] = CANVAS
    new_input = helper.make_tensor_value_info("images", TensorProto.UINT8,
                                              [batch, source_h, source_w, 3])
    kept = [i for i in g.input if i.name not in ("images", "mask")]
    del g.input[:]
    g.input.extend([new_input, *kept])
    old_nodes = list(g.node)
    del g.node[:]
    g.node.extend([*nodes, *old_nodes])
    g.initializer.extend(inits)
    onnx.checker.check_model(fused, full_check=True)
    fused_meta = meta.replace(extra={**meta.extra, FUSED_KEY: {
        "source_height": source_h, "source_width": source_w,
        "input": "uint8 [B, Hs, Ws, 3] RGB", **({"mask": "in-graph"} if mask else {})}})
    return fused, fused_meta


@dataclass
class FusedParity:
    """Fused graph on uint8 frames vs the plain graph on ``runtime.preprocess`` output."""

    source: str  # where the frames came from
    frames: int = 0
    canvas_max_abs: float = 0.0  # max |fused canvas - numpy canvas| (normalised units)
    detections_ref: int = 0
    detections_fused: int = 0
    detections_matched: int = 0  # same label and IoU >= 0.9 (runtime.compare.match_detections)
    notes: list[str] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        n = max(self.detections_ref, self.detections_fused)
        return 1.0 if n == 0 else self.detections_matched / n

    @property
    def passed(self) -> bool:
        return self.agreement >= 0.99

    def format(self) -> str:
        return (f"fused preprocessing vs numpy path ({self.frames} frames, {self.source}): "
                f"canvas max |diff| {self.canvas_max_abs:.3g}; detections "
                f"{self.detections_matched}/{max(self.detections_ref, self.detections_fused)} "
                f"agree at IoU 0.9 ({self.agreement:.1%}) -> "
                + ("PASS" if self.passed else "FAIL (< 99%)"))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "frames": self.frames,
                "canvas_max_abs": self.canvas_max_abs, "detections_ref": self.detections_ref,
                "detections_fused": self.detections_fused,
                "detections_matched": self.detections_matched, "agreement": self.agreement,
                "passed": self.passed}


def parity_frames(source_h: int, source_w: int, calib_data: str | None, count: int
                  ) -> tuple[list[np.ndarray], str]:
    """uint8 [Hs, Ws, 3] frames for the parity check: calibration images resized to the
    source size, else synthetic shapes scenes (objects to detect, not noise)."""
    from PIL import Image

    if calib_data is not None:
        from export.int8.calib_data import list_images
        from runtime.image_io import load_image

        paths = list_images(calib_data, count)
        frames = [np.asarray(load_image(p).resize((source_w, source_h),
                                                  Image.Resampling.BILINEAR)) for p in paths]
        return frames, f"images from {calib_data}"
    from detr.data.synthetic import ShapesConfig, render_image

    side = max(source_h, source_w)
    config = ShapesConfig(image_size=side, max_objects=8)
    frames = [np.ascontiguousarray(render_image(config, "val", i)[0][:source_h, :source_w])
              for i in range(count)]
    return frames, "synthetic shapes scenes"


def check_fused(plain: onnx.ModelProto, fused: onnx.ModelProto, meta: ModelMeta,
                frames: list[np.ndarray], source: str) -> FusedParity:
    """Both graphs on ``frames`` (ONNX Runtime CPU, one frame per call): the plain one
    through ``runtime.preprocess``, the fused one on the raw frames. Detections are
    decoded alike (paper post-processing) and matched with ``runtime.compare``."""
    import onnxruntime as ort

    from runtime.compare import match_detections
    from runtime.decode import decode, target_sizes
    from runtime.preprocess import preprocess

    def session(model: Any) -> Any:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    plain_s, fused_s = session(plain), session(fused)
    pre_s = session(preprocess_graph(meta, *frames[0].shape[:2]))
    report = FusedParity(source=source, frames=len(frames))
    reps = meta.batch_size or 1  # a fixed-batch graph gets the frame repeated
    for frame in frames:
        batch = preprocess([frame], meta)
        fed = np.repeat(frame[None], reps, axis=0)
        (graph_canvas,) = pre_s.run(["canvas"], {"images": frame[None]})
        report.canvas_max_abs = max(report.canvas_max_abs,
                                    float(np.abs(graph_canvas - batch.images).max()))
        feed = {"images": np.repeat(batch.images, reps, axis=0).astype(_input_dtype(plain_s))}
        if meta.with_mask:
            feed["mask"] = np.repeat(batch.mask, reps, axis=0)
        ref = plain_s.run(["logits", "boxes"], feed)
        got = fused_s.run(["logits", "boxes"], {"images": fed})
        target = target_sizes(batch, meta)
        (d_ref,), (d_got,) = (decode(np.asarray(o[0], np.float32), np.asarray(o[1], np.float32),
                                     target) for o in (ref, got))
        report.detections_ref += len(d_ref)
        report.detections_fused += len(d_got)
        report.detections_matched += match_detections(d_ref, d_got)
    return report


def _input_dtype(session: Any) -> Any:
    kind = next(i.type for i in session.get_inputs() if i.name == "images")
    return np.float16 if kind == "tensor(float16)" else np.float32


def fuse_with_check(graph: onnx.ModelProto, meta: ModelMeta, config: Any
                    ) -> tuple[onnx.ModelProto, ModelMeta, FusedParity]:
    """The ``export-onnx`` hook: fuse for ``config.fused_source`` and check parity on
    ``config.calib_images`` frames (from ``config.calib_data`` or synthetic scenes)."""
    from export.onnx_meta import write_meta

    source_h, source_w = config.fused_source
    fused, fused_meta = fuse_preprocess(graph, meta, source_h, source_w)
    write_meta(fused, fused_meta)
    frames, where = parity_frames(source_h, source_w, config.calib_data, config.calib_images)
    return fused, fused_meta, check_fused(graph, fused, meta, frames, where)
