"""Space-to-depth form of the ResNet stem convolution, for ONNX Runtime's integer
convolution.

The stem is a 7x7 stride-2 convolution on the 3-channel image. Integer conv
kernels are built for many channels. With 3 channels, ONNX Runtime's
QLinearConv runs the stem at about a fifth of the rate of the other
convolutions of DETR-R50: 25 ms of its ~280 ms INT8 time at 800x1066.

The rewrite is exact. Pad the image by the conv's padding (P on each side),
then move each 2x2 pixel block into channels (``SpaceToDepth``, blocksize 2).
The result has 4*C channels at half the resolution. On it, a stride-1
convolution with ``ceil(k/2)`` x ``ceil(k/2)`` kernels and no padding gives the
same output:

    y[o, i, j] = sum_{c,u,v} W[o, c, u, v] * x_pad[c, 2i + u, 2j + v]
               = sum_{c,p,q,a,b} W[o, c, 2a + p, 2b + q] * s2d[(p*2 + q)*C + c, i + a, j + b]

Here u = 2a + p and v = 2b + q. Taps with 2a + p >= k get weight 0: for 7x7,
the 4x4x12 kernel does 192 multiply-adds per output where 7x7x3 did 147, on a
shape the integer kernels run ~2.5x faster. ``SpaceToDepth`` orders its
output channels as (p, q, c), per the ONNX operator spec. Only the cpu Q/DQ
format uses this (``export.int8.qdq_insert``). TensorRT has its own fast stem
kernels, so the TensorRT format and the FP32/FP16 exports keep the original
graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def s2d_weight(weight: np.ndarray) -> np.ndarray:
    """[O, C, k, k] stride-2 kernel -> [O, 4C, ceil(k/2), ceil(k/2)] stride-1 kernel
    on the ``SpaceToDepth(blocksize=2)`` input (channel = (p*2 + q)*C + c)."""
    out_ch, in_ch, k, _ = weight.shape
    half = (k + 1) // 2
    new = np.zeros((out_ch, 4 * in_ch, half, half), dtype=weight.dtype)
    for p in range(2):
        for q in range(2):
            block = slice((p * 2 + q) * in_ch, (p * 2 + q + 1) * in_ch)
            taps = weight[:, :, p::2, q::2]  # u = 2a + p, v = 2b + q with u, v < k
            new[:, block, :taps.shape[2], :taps.shape[3]] = taps
    return new


def stem_to_space_to_depth(model: onnx.ModelProto) -> bool:
    """Rewrite (in place) the stride-2 square Conv that reads a graph input into
    Pad + SpaceToDepth + stride-1 Conv. Returns False, graph untouched, when
    there is no such conv or its input size does not allow it (the padded height
    and width must be even)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    inits = {i.name: i for i in graph.initializer}
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.input[0] not in inputs or node.input[1] not in inits:
            continue
        a = _attrs(node)
        weight = numpy_helper.to_array(inits[node.input[1]])
        k = weight.shape[-1]
        pads = list(a.get("pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
        dims = [d.dim_value for d in inputs[node.input[0]].type.tensor_type.shape.dim]
        if (weight.ndim != 4 or weight.shape[2] != k or k < 3
                or list(a.get("strides", [1, 1])) != [2, 2]  # type: ignore[call-overload]
                or a.get("group", 1) != 1
                or list(a.get("dilations", [1, 1])) != [1, 1]  # type: ignore[call-overload]
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                or len(dims) != 4 or not dims[2] or not dims[3]):
            return False
        top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
        height, width = dims[2] + top + bottom, dims[3] + left + right
        # Output i reads padded rows 2i..2i+k-1; SpaceToDepth needs even sizes, and the
        # rows it would add must lie beyond the last one any output reads.
        out_h, out_w = (height - k) // 2 + 1, (width - k) // 2 + 1
        half = (k + 1) // 2
        bottom += 2 * (out_h - 1 + half) - height
        right += 2 * (out_w - 1 + half) - width
        if bottom < 0 or right < 0:
            return False
        name = node.name or node.output[0]
        pads_name, weight_name = f"{name}_s2d_pads", f"{node.input[1]}_s2d"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([0, 0, top, left, 0, 0, bottom, right], np.int64),
                                    pads_name),
            numpy_helper.from_array(s2d_weight(weight), weight_name)])
        padded, s2d = f"{name}_s2d_padded", f"{name}_s2d_input"
        new_nodes = [
            helper.make_node("Pad", [node.input[0], pads_name], [padded], name=f"{name}_s2d_pad",
                             mode="constant"),
            helper.make_node("SpaceToDepth", [padded], [s2d], name=f"{name}_s2d", blocksize=2),
            helper.make_node("Conv", [s2d, weight_name, *node.input[2:]], list(node.output),
                             name=node.name, kernel_shape=[half, half], strides=[1, 1],
                             pads=[0, 0, 0, 0])]
        del graph.node[index]
        for offset, new in enumerate(new_nodes):
            graph.node.insert(index + offset, new)
        if not any(n.input[1:2] == [node.input[1]] for n in graph.node):
            graph.initializer.remove(inits[node.input[1]])
        return True
    return False
