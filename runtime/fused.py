"""Runtime side of models exported with ``export-onnx --fused-preprocess``.

Such a graph takes ``images`` as uint8 ``[B, Hs, Ws, 3]`` RGB frames of one fixed
source size and does the resize into the canvas, the normalisation and the zero
padding itself (``export/fused_preprocess.py``). The runtime only stacks frames:
no resize, no float conversion on the CPU. The metadata records the source size
under ``extra["fused_preprocess"]``; decoding is unchanged (boxes refer to the
canvas, whose size in source pixels is ``canvas / scale``, or for a with-mask model
to the valid region, i.e. the source frame). A with-mask model gets its mask inside
the graph: for one source size the valid region ``[:h, :w]`` is the same in every
frame, so the mask is a constant and the graph has no ``mask`` input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.errors import InputError
from runtime.metadata import ModelMeta
from runtime.preprocess import Batch, target_size

FUSED_KEY = "fused_preprocess"


def fused_source_size(meta: ModelMeta) -> tuple[int, int] | None:
    """(Hs, Ws) of the frames a fused model takes, or None for a float-input model."""
    spec = meta.extra.get(FUSED_KEY)
    if not isinstance(spec, dict):
        return None
    h, w = spec.get("source_height"), spec.get("source_width")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise InputError("metadata", f"malformed {FUSED_KEY} entry {spec!r}")
    return h, w


def expects_mask_input(meta: ModelMeta) -> bool:
    """Whether the graph has a ``mask`` input: with-mask models, except fused ones, whose
    mask is a constant built inside the graph (one source size = one padding)."""
    return meta.with_mask and fused_source_size(meta) is None


def stack_frames(frames: Sequence[np.ndarray], meta: ModelMeta) -> Batch:
    """uint8 ``[H, W, 3]`` frames of the model's source size -> a Batch whose ``images``
    are the frames themselves, uint8 ``[B, Hs, Ws, 3]`` (the graph preprocesses)."""
    size = fused_source_size(meta)
    if size is None:
        raise InputError("model", "not exported with --fused-preprocess")
    Hs, Ws = size
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.shape != (Hs, Ws, 3):
            raise InputError(f"frame {i}", f"is {f.dtype} {tuple(f.shape)}; this model was "
                             f"exported with --fused-preprocess for uint8 frames of "
                             f"{Hs}x{Ws}x3 (re-export for this source size)")
    B = len(frames)
    h, w, scale = target_size(Hs, Ws, meta)  # as runtime.preprocess sizes it
    mask = np.ones((B, meta.input_height, meta.input_width), dtype=bool)
    mask[:, :h, :w] = False
    return Batch(images=np.stack(frames), mask=mask, scales=np.full((B,), scale),
                 valid_sizes=np.tile(np.array([[h, w]], np.int64), (B, 1)),
                 orig_sizes=np.tile(np.array([[Hs, Ws]], np.int64), (B, 1)))


def check_frames(meta: ModelMeta, images: np.ndarray, batch_size: int | None) -> np.ndarray:
    """Validate a uint8 ``[B, Hs, Ws, 3]`` feed for a fused model; return it contiguous."""
    Hs, Ws = fused_source_size(meta) or (0, 0)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (Hs, Ws, 3):
        raise InputError("images", f"batch has shape {tuple(images.shape)}, the fused model "
                         f"expects uint8 [B, {Hs}, {Ws}, 3] frames")
    if batch_size is not None and images.shape[0] != batch_size:
        raise InputError("images", f"batch of {images.shape[0]} frames, the model has a fixed "
                         f"batch size of {batch_size}")
    return np.ascontiguousarray(images, dtype=np.uint8)
