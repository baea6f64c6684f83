"""Batch collation for DETR training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from detr.nested_tensor import NestedTensor, nested_tensor_from_tensor_list


def collate_fn(batch: Sequence[tuple[Tensor, dict[str, Any]]]
               ) -> tuple[NestedTensor, list[dict[str, Any]]]:
    """``[(image [3, H_i, W_i], target), ...]`` -> ``(NestedTensor, [target, ...])``.

    Images of different sizes are zero-padded bottom/right to ``[B, 3, max H, max W]``
    with ``mask`` ``[B, max H, max W]`` True on padding; the normalised cxcywh
    target boxes stay relative to each image's valid (unpadded) region, as in
    the paper. Targets are passed through unchanged as a list.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return nested_tensor_from_tensor_list(images), targets
