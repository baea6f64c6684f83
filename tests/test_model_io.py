"""One check of a model file against its metadata (runtime/backends/model_io.py): the
ONNX graph read with the ``onnx`` package (export side) and the ONNX Runtime session
(runtime side, no ``onnx`` needed) refuse the same disagreements with the same words."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tiny_onnx import make_tiny_onnx, tiny_meta

from export.onnx_meta import check_graph_matches_meta, graph_tensors, load_onnx, read_meta
from runtime.backends.model_io import TensorSpec, check_model_io
from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from runtime.errors import ModelFormatError
from runtime.metadata import METADATA_KEY, ModelMeta


def _with_meta(src: Path, dest: Path, meta: ModelMeta | None) -> Path:
    model = onnx.load(str(src))
    del model.metadata_props[:]
    if meta is not None:
        model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    onnx.save(model, str(dest))
    return dest


def _both_refuse(path: Path) -> str:
    """The message of the export-side and of the runtime-side check (asserted equal)."""
    with pytest.raises(ModelFormatError) as export_side:
        model = load_onnx(path)
        check_graph_matches_meta(model, read_meta(model, path), path)
    with pytest.raises(ModelFormatError) as runtime_side:
        OnnxRuntimeBackend(path, providers="cpu")
    assert str(export_side.value) == str(runtime_side.value)
    return str(export_side.value)


@pytest.mark.parametrize(("meta", "match"), [
    (tiny_meta(64, 64, batch_size=2), "graph batch is dynamic but the metadata says fixed 2"),
    (tiny_meta(32, 64), (r"graph input 'images' has shape \[-1, 3, 64, 64\] but the metadata "
                        r"says float \[B, 3, 32, 64\]")),
    (tiny_meta(64, 64, with_mask=True), "metadata with_mask=True but the graph has no 'mask'"),
    (tiny_meta(64, 64).replace(class_names=["a", "b"], label_map=[1, 2]),
     r"graph output 'logits' has 4 columns but the metadata lists 2 class names \(3 incl"),
    (None, (r"m2\.onnx: ONNX model has no 'detr_edge' metadata \(was it exported by "
           r"`detr-edge export-onnx`\?\)")),
])
def test_graph_and_session_refuse_alike(tmp_path: Path, meta: ModelMeta | None,
                                         match: str) -> None:
    good = make_tiny_onnx(tmp_path / "m.onnx", tiny_meta(64, 64))
    message = _both_refuse(_with_meta(good, tmp_path / "m2.onnx", meta))
    assert re.search(match, message), message


def test_graph_tensors_and_session_agree(tmp_path: Path) -> None:
    meta = tiny_meta(32, 48, batch_size=2, with_mask=True)
    path = make_tiny_onnx(tmp_path / "m.onnx", meta)
    from_graph = graph_tensors(onnx.load(str(path)))
    backend = OnnxRuntimeBackend(path, providers="cpu")
    assert from_graph["images"] == TensorSpec("images", True, np.dtype(np.float32), (2, 3, 32, 48))
    assert from_graph["mask"].dtype == np.dtype(bool) and not from_graph["logits"].is_input
    assert (backend.batch_size, backend.has_mask) == (2, True)
    inputs = check_model_io(meta, from_graph, path)
    assert (inputs.layout, inputs.item_shape, inputs.batch_size) == ("canvas", (3, 32, 48), 2)


def test_frames_of_a_fused_model_must_be_uint8() -> None:
    meta = tiny_meta(64, 64).replace(
        extra={"fused_preprocess": {"source_height": 48, "source_width": 80}})
    f32 = np.dtype(np.float32)
    tensors = {"images": TensorSpec("images", True, f32, (-1, 48, 80, 3)),
               "logits": TensorSpec("logits", False, f32, (-1, 6, 4)),
               "boxes": TensorSpec("boxes", False, f32, (-1, 6, 4))}
    with pytest.raises(ModelFormatError, match="graph input 'images' is float32 but the "
                                               r"metadata says uint8 \[B, 48, 80, 3\]"):
        check_model_io(meta, tensors, "f.onnx")
    tensors["images"] = TensorSpec("images", True, None, (-1, 48, 80, 3))  # type not stated
    assert check_model_io(meta, tensors, "f.onnx").layout == "frames"
