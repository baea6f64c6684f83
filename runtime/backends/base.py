"""The interface every inference backend implements."""

from __future__ import annotations

import abc
import os

import numpy as np

from runtime.errors import InputError, ModelFormatError
from runtime.metadata import ModelMeta


class Backend(abc.ABC):
    """Runs the exported DETR graph: ``images`` (+ ``mask``) -> ``(logits, boxes)``.

    Attributes set by subclasses:
    - ``name``: short name for reports, e.g. "onnxruntime[CPUExecutionProvider]".
    - ``meta``: the model metadata (input size, classes, batch, with_mask).
    - ``batch_size``: fixed batch of the graph/engine, or None for a dynamic axis.
    - ``max_batch_size``: largest batch accepted (engine profile max), or None.
    """

    name: str
    meta: ModelMeta
    batch_size: int | None
    max_batch_size: int | None = None

    @abc.abstractmethod
    def infer(self, images: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """images float32 [B,3,H,W] normalised, mask bool [B,H,W] (True = padding; used only
        when the model has a mask input) -> logits float32 [B,Q,K+1], boxes float32 [B,Q,4]
        normalised cxcywh."""

    def close(self) -> None:
        """Release device memory / sessions (idempotent)."""


def check_batch(meta: ModelMeta, images: np.ndarray, mask: np.ndarray | None,
                batch_size: int | None, max_batch_size: int | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a preprocessed batch against the model; return contiguous arrays.

    Raises ``InputError`` naming ``images``/``mask`` for a wrong shape: the
    graph has a fixed canvas, and a silently reshaped batch would give
    garbage boxes.
    """
    H, W = meta.input_height, meta.input_width  # canvas
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (3, H, W):
        raise InputError("images", f"preprocessed batch has shape {tuple(images.shape)}, the "
                         f"model expects [B, 3, {H}, {W}] (use runtime.preprocess.preprocess)")
    B = images.shape[0]
    if B == 0:
        raise InputError("images", "empty batch")
    if batch_size is not None and B != batch_size:
        raise InputError("images", f"batch of {B} images, the model has a fixed batch size "
                         f"of {batch_size}")
    if max_batch_size is not None and B > max_batch_size:
        raise InputError("images", f"batch of {B} images exceeds the engine's maximum "
                         f"batch size {max_batch_size}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (B, H, W):
            raise InputError("mask", f"mask has shape {tuple(mask.shape)}, expected "
                             f"{(B, H, W)}")
        mask = np.ascontiguousarray(mask, dtype=bool)
    elif meta.with_mask:
        mask = np.zeros((B, H, W), dtype=bool)  # no padding: the whole canvas is image
    return np.ascontiguousarray(images, dtype=np.float32), mask


def pad_batch(images: np.ndarray, mask: np.ndarray | None, size: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad a batch to ``size`` images with empty canvases (zeros, mask all True =
    all padding); the caller drops the extra outputs. Used for a fixed-batch
    model's last partial batch and for a dynamic engine whose profile minimum is
    above the batch. ``images`` [B,3,H,W], ``mask`` [B,H,W] or None; B <= size."""
    extra = size - images.shape[0]
    if extra <= 0:
        return images, mask
    images = np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])
    if mask is not None:
        mask = np.concatenate([mask, np.ones((extra, *mask.shape[1:]), dtype=bool)])
    return images, mask


def check_outputs(meta: ModelMeta, logits: np.ndarray, boxes: np.ndarray, batch: int,
                  source: str | os.PathLike[str]) -> None:
    """Raise ``ModelFormatError`` naming ``source`` when the outputs disagree with the
    metadata: logits must be ``[B, Q, K+1]`` for K class names and boxes ``[B, Q, 4]``.

    A model whose metadata lists fewer class names than its logits have columns
    would otherwise index past the names while decoding.
    """
    K = meta.num_classes
    if logits.ndim != 3 or logits.shape[0] != batch or logits.shape[2] != K + 1:
        raise ModelFormatError(source, f"the model's logits have shape {list(logits.shape)}, but "
                               f"its metadata lists {K} class names (expected [{batch}, Q, "
                               f"{K + 1}] incl. no-object)")
    if boxes.shape != (*logits.shape[:2], 4):
        raise ModelFormatError(source, f"the model's boxes have shape {list(boxes.shape)}, "
                               f"expected {[*logits.shape[:2], 4]}")
