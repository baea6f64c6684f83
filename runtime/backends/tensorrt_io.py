"""I/O planning of the native TensorRT backend: what the engine's ``images`` input is
and how a batch is fed to it. Pure numpy (no TensorRT), so it is unit-tested on a CPU.

Two input layouts exist:

- ``canvas``: the plain export, float32 (or float16) ``[B, 3, H, W]`` normalised
  canvases made by ``runtime.preprocess`` (+ bool ``mask [B, H, W]`` with
  ``--with-mask``).
- ``frames``: ``export-onnx --fused-preprocess HsxWs``, uint8 ``[B, Hs, Ws, 3]`` RGB
  frames; the engine resizes, normalises and pads them on the GPU, so the runtime
  copies frame bytes into the pinned buffer and nothing else (4x fewer bytes over
  PCIe than a float canvas of the same size). A with-mask model exported this way
  builds its constant mask inside the graph and has no ``mask`` input.

The layout is read from the engine's own tensor shapes and dtypes and checked
against the header metadata, so an engine built from another ONNX fails here with
a readable ``ModelFormatError`` instead of a TensorRT shape error at the first frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from runtime.backends.base import check_batch, pad_batch
from runtime.backends.model_io import ModelInputs, TensorSpec, check_model_io
from runtime.errors import InputError, ModelFormatError
from runtime.fused import check_frames
from runtime.metadata import ModelMeta


@dataclass(frozen=True)
class InputPlan(ModelInputs):
    """How batches are fed to the engine: the model's inputs
    (``runtime.backends.model_io.ModelInputs``) and the batch range it accepts.

    min_batch / max_batch: the profile's min/max batch (both ``batch_size`` for a
    fixed batch); a smaller batch is padded up to ``min_batch``.
    """

    min_batch: int
    max_batch: int


def plan_inputs(meta: ModelMeta, tensors: dict[str, TensorSpec],
                profile: tuple[int, int] | None, source: str | os.PathLike[str]) -> InputPlan:
    """Check the engine's I/O against the header metadata and decide the feed.

    ``profile``: (min, max) batch of optimization profile 0 for a dynamic batch axis
    (``ICudaEngine.get_tensor_profile_shape``), None for a fixed batch.
    Raises ``ModelFormatError`` naming ``source`` when they disagree
    (``runtime.backends.model_io.check_model_io``, the check every model file gets).
    """
    inputs = check_model_io(meta, tensors, source, kind="engine")
    if inputs.batch_size is not None:
        lo = hi = inputs.batch_size
    elif profile is None:
        raise ModelFormatError(source, "dynamic batch axis without an optimization profile")
    else:
        lo, hi = profile
    return InputPlan(**vars(inputs), min_batch=lo, max_batch=hi)


def prepare_feed(plan: InputPlan, meta: ModelMeta, images: np.ndarray,
                 mask: np.ndarray | None) -> tuple[dict[str, np.ndarray], int]:
    """``(feed, n)``: the validated batch padded to the engine's minimum batch, by
    input name, in the engine's dtypes; ``n`` = images asked for (outputs to keep).

    canvas layout: ``images`` float [B, 3, H, W], ``mask`` bool [B, H, W] or None.
    frames layout: ``images`` uint8 [B, Hs, Ws, 3] (``mask`` is ignored: the graph
    has its own). Raises ``InputError`` for a wrong shape or batch size.
    """
    if plan.layout == "frames":
        images = check_frames(meta, images, plan.batch_size)
        if images.shape[0] == 0:
            raise InputError("images", "empty batch")
        if images.shape[0] > plan.max_batch:
            raise InputError("images", f"batch of {images.shape[0]} frames exceeds the "
                             f"engine's maximum batch size {plan.max_batch}")
        mask = None
    else:
        images, mask = check_batch(meta, images, mask, plan.batch_size, plan.max_batch)
    n = images.shape[0]
    images, mask = pad_batch(images, mask, plan.min_batch)
    feed = {"images": images.astype(plan.images_dtype, copy=False)}
    if plan.has_mask and mask is not None:
        feed["mask"] = mask
    return feed, n


def buffer_shape(spec: TensorSpec, resolved: tuple[int, ...], max_batch: int,
                 source: str | os.PathLike[str] = "<engine>") -> tuple[int, ...]:
    """Host/device buffer shape of a tensor: its shape with the batch at ``max_batch``.

    ``resolved``: the context's shape once the inputs are set to the max batch
    (outputs' dynamic axes resolved); a uint8 frames input keeps its NHWC shape.
    """
    if len(resolved) != len(spec.shape) or any(d < 0 for d in resolved[1:]):
        raise ModelFormatError(source, f"engine tensor '{spec.name}' has the unresolved shape "
                               f"{list(resolved)} at batch {max_batch}")
    return (max_batch, *resolved[1:])
