"""Read and write :class:`runtime.metadata.ModelMeta` in an ONNX model's
``metadata_props`` (key :data:`runtime.metadata.METADATA_KEY`).

The runtime reads everything it needs (input size, normalisation, class names,
label map, batch size, mask input, precision) from this one JSON document.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from runtime.errors import ModelFormatError, first_line
from runtime.files import is_regular, kind_of
from runtime.metadata import METADATA_KEY, ModelMeta

if TYPE_CHECKING:
    import onnx


def write_meta(model: onnx.ModelProto, meta: ModelMeta) -> onnx.ModelProto:
    """Store ``meta`` in ``model.metadata_props`` (in place, replacing an old entry)."""
    meta.validate("ModelMeta")
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for prop in kept:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    return model


def read_meta(model: onnx.ModelProto, source: str | os.PathLike[str] = "<onnx model>") -> ModelMeta:
    """Parse the detr-edge metadata of ``model``; ``ModelFormatError`` if absent/invalid."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelMeta.from_json(prop.value, str(source))
    raise ModelFormatError(source, f"ONNX model has no '{METADATA_KEY}' metadata "
                           "(was it exported by detr-edge export-onnx?)")


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file; a missing, truncated or non-ONNX file -> ``ModelFormatError``."""
    import onnx
    from google.protobuf.message import DecodeError

    if not os.path.exists(path):
        raise ModelFormatError(path, "file not found")
    if not is_regular(path):  # onnx.load would block on a FIFO
        raise ModelFormatError(path, f"is {kind_of(os.stat(path).st_mode)}, not an ONNX file")
    try:
        model = onnx.load(os.fspath(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFormatError(path, f"not a readable ONNX model ({type(exc).__name__}: "
                               f"{first_line(exc)})") from exc
    except Exception as exc:  # onnx.checker.ValidationError: e.g. an external-data path
        # outside the model's folder, which onnx refuses to follow
        raise ModelFormatError(path, f"onnx refused to load the model ({first_line(exc)})") from exc
    if not model.graph.node or not model.opset_import:
        raise ModelFormatError(path, "not an ONNX model (empty graph or no opset), "
                               "is the file truncated?")
    return model


def check_graph_matches_meta(model: onnx.ModelProto, meta: ModelMeta,
                             source: str | os.PathLike[str] = "<onnx model>") -> None:
    """Raise ``ModelFormatError`` when the graph's ``images`` (and ``mask``) inputs
    disagree with the metadata: fixed input size, fixed or dynamic batch, mask.

    The runtime resizes every image to the metadata's size and TensorRT builds
    profiles from it, so an edited or mixed-up file would otherwise fail deep
    inside the builder or feed the graph a canvas of the wrong size.
    """
    weights = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in weights}
    if "images" not in inputs:
        raise ModelFormatError(source, f"graph has no 'images' input (inputs: {sorted(inputs)})")
    dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                             for d in inputs["images"].type.tensor_type.shape.dim]
    from runtime.fused import expects_mask_input, fused_source_size

    H, W = meta.input_height, meta.input_width
    fused = fused_source_size(meta)  # uint8 [B, Hs, Ws, 3] frames for --fused-preprocess
    want = (fused[0], fused[1], 3) if fused else (3, H, W)
    if len(dims) != 4 or any(isinstance(got, int) and got != w
                             for got, w in zip(dims[1:], want)):
        raise ModelFormatError(source, f"graph input 'images' has shape {dims} but the metadata "
                               f"says [B, {want[0]}, {want[1]}, {want[2]}]")
    graph_batch = dims[0] if isinstance(dims[0], int) else None
    if graph_batch != meta.batch_size:
        def describe(b: int | None) -> str:
            return "dynamic" if b is None else f"fixed {b}"
        raise ModelFormatError(source, f"graph batch is {describe(graph_batch)} but the metadata "
                               f"says {describe(meta.batch_size)}")
    if ("mask" in inputs) != expects_mask_input(meta):  # a fused graph makes its own mask
        raise ModelFormatError(source, f"metadata with_mask={meta.with_mask} but the graph "
                               f"{'has' if 'mask' in inputs else 'has no'} 'mask' input")
