"""A model's I/O tensors as its file declares them, checked against the metadata.

The one check that an ONNX graph (``export.onnx_meta``, read with the ``onnx``
package), an ONNX Runtime session (``runtime.backends.onnxruntime_backend``, no
``onnx`` package on a runtime-only install) and a TensorRT engine
(``runtime.backends.tensorrt_io``) agree with the detr-edge metadata: tensor names,
the ``images`` layout, dtype and batch, the ``mask`` input and the logits width.
Each caller describes its tensors as :class:`TensorSpec` (the information all three
have) and this module compares them. The runtime resizes every image to the
metadata's size and TensorRT builds profiles from it, so an edited or mixed-up file
would otherwise fail deep inside the builder or feed the graph a canvas of the wrong
size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ModelFormatError
from runtime.fused import expects_mask_input, fused_source_size
from runtime.metadata import ModelMeta

FLOAT_INPUTS = (np.dtype(np.float32), np.dtype(np.float16))  # plain canvases: as exported
FRAME_INPUTS = (np.dtype(np.uint8),)  # --fused-preprocess frames
# What holds the metadata in each kind of file, for the messages.
_META_NAME = {"graph": "metadata", "engine": "header"}


@dataclass(frozen=True)
class TensorSpec:
    """One model I/O tensor as the file declares it."""

    name: str
    is_input: bool
    dtype: np.dtype[Any] | None  # numpy equivalent of the declared type; None = not stated
    shape: tuple[int, ...]  # -1 = dynamic or unknown (the batch axis, usually)


@dataclass(frozen=True)
class ModelInputs:
    """How the model takes its inputs, once they agree with the metadata.

    layout: "canvas" (float [B, 3, H, W]) or "frames" (uint8 [B, Hs, Ws, 3]).
    item_shape: shape of one batch item of ``images``.
    images_dtype: the declared dtype of ``images`` (float32 when not stated).
    batch_size: fixed batch, or None for a dynamic batch axis.
    has_mask: the model has a ``mask`` input (plain with-mask models only).
    """

    layout: str
    item_shape: tuple[int, ...]
    images_dtype: np.dtype[Any]
    batch_size: int | None
    has_mask: bool


def _batch_word(batch: int | None) -> str:
    return "dynamic" if batch is None else f"fixed {batch}"


def _expected_images(meta: ModelMeta) -> tuple[str, tuple[int, ...], tuple[np.dtype[Any], ...],
                                                 str]:
    """``(layout, item shape, allowed dtypes, description)`` the metadata implies."""
    fused = fused_source_size(meta)
    H, W = meta.input_height, meta.input_width
    if fused is None:
        return "canvas", (3, H, W), FLOAT_INPUTS, f"float [B, 3, {H}, {W}]"
    return ("frames", (*fused, 3), FRAME_INPUTS,
            f"uint8 [B, {fused[0]}, {fused[1]}, 3] (--fused-preprocess)")


def check_model_io(meta: ModelMeta, tensors: Mapping[str, TensorSpec],
                   source: str | os.PathLike[str], kind: str = "graph") -> ModelInputs:
    """Raise ``ModelFormatError`` naming ``source`` when ``tensors`` disagree with
    ``meta``; else say how the model takes its inputs.

    ``kind``: "graph" (an ONNX model, whose metadata is its ``detr_edge`` property) or
    "engine" (a detr-edge engine file, whose metadata is its header). Checked: input
    ``images`` and outputs ``logits``/``boxes`` exist; ``images`` is ``[B, 3, H, W]``
    float (or ``[B, Hs, Ws, 3]`` uint8 for ``--fused-preprocess``) at the metadata's
    size, a dynamic dimension matching any size; the batch axis is fixed or dynamic as
    the metadata says; a ``mask`` input exactly when the metadata expects one; a static
    ``logits`` width of K+1 for K class names.
    """
    doc = _META_NAME[kind]
    inputs = sorted(n for n, t in tensors.items() if t.is_input)
    outputs = sorted(n for n, t in tensors.items() if not t.is_input)
    if "images" not in inputs or not {"logits", "boxes"} <= set(outputs):
        raise ModelFormatError(source, f"expected input 'images' and outputs 'logits', "
                               f"'boxes'; the {kind} has inputs {inputs}, outputs {outputs}")
    fused = fused_source_size(meta)
    has_mask = "mask" in inputs
    if has_mask != expects_mask_input(meta):  # a fused model makes its (constant) mask itself
        raise ModelFormatError(source, f"{doc} with_mask={meta.with_mask}"
                               f"{' (fused preprocessing: mask in the graph)' if fused else ''} "
                               f"but the {kind} {'has' if has_mask else 'has no'} 'mask' input")
    layout, item, dtypes, what = _expected_images(meta)
    images = tensors["images"]
    shape = list(images.shape)
    if len(shape) != 4 or any(got >= 0 and got != want for got, want in zip(shape[1:], item)):
        raise ModelFormatError(source, f"{kind} input 'images' has shape {shape} but the {doc} "
                               f"says {what}")
    if images.dtype is not None and images.dtype not in dtypes:
        raise ModelFormatError(source, f"{kind} input 'images' is {images.dtype} but the {doc} "
                               f"says {what}")
    batch = shape[0] if shape[0] >= 0 else None
    if batch != meta.batch_size:
        raise ModelFormatError(source, f"{kind} batch is {_batch_word(batch)} but the {doc} "
                               f"says {_batch_word(meta.batch_size)}")
    logits = tensors["logits"].shape
    K = meta.num_classes
    if len(logits) == 3 and logits[2] >= 0 and logits[2] != K + 1:
        raise ModelFormatError(source, f"{kind} output 'logits' has {logits[2]} columns but the "
                               f"{doc} lists {K} class names ({K + 1} incl. no-object)")
    return ModelInputs(layout=layout, item_shape=item,
                       images_dtype=images.dtype or np.dtype(np.float32), batch_size=batch,
                       has_mask=has_mask)
