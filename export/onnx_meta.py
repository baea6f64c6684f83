"""Read and write :class:`runtime.metadata.ModelMeta` in an ONNX model's
``metadata_props`` (key :data:`runtime.metadata.METADATA_KEY`).

The runtime reads everything it needs (input size, normalisation, class names,
label map, batch size, mask input, precision) from this one JSON document.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from runtime.backends.model_io import TensorSpec, check_model_io
from runtime.errors import ModelFormatError, first_line
from runtime.files import is_regular, kind_of
from runtime.metadata import METADATA_KEY, ModelMeta, meta_from_properties


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
    return meta_from_properties({p.key: p.value for p in model.metadata_props}, str(source))


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file; a missing, truncated or non-ONNX file -> ``ModelFormatError``."""
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


def graph_tensors(model: onnx.ModelProto) -> dict[str, TensorSpec]:
    """The graph's inputs (initializers excluded) and outputs as ``TensorSpec``: dtype
    from the element type (None when unset), ``-1`` for a symbolic or unknown dimension."""
    weights = {init.name for init in model.graph.initializer}
    specs = {}
    for is_input, values in ((True, model.graph.input), (False, model.graph.output)):
        for value in values:
            if value.name in weights:
                continue
            tensor = value.type.tensor_type
            dtype = (np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
                     if tensor.elem_type else None)
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1
                          for d in tensor.shape.dim)
            specs[value.name] = TensorSpec(value.name, is_input, dtype, shape)
    return specs


def check_graph_matches_meta(model: onnx.ModelProto, meta: ModelMeta,
                             source: str | os.PathLike[str] = "<onnx model>") -> None:
    """Raise ``ModelFormatError`` when the graph's inputs and outputs disagree with the
    metadata (``runtime.backends.model_io.check_model_io``: names, input size, dtype,
    fixed or dynamic batch, mask, logits width)."""
    check_model_io(meta, graph_tensors(model), source)
