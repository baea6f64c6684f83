"""NestedTensor: a padded image batch plus its padding mask (as in official DETR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class NestedTensor:
    """``tensors`` float [B, C, H, W] zero-padded bottom/right; ``mask`` bool [B, H, W],
    True on padding pixels."""

    def __init__(self, tensors: Tensor, mask: Tensor | None) -> None:
        self.tensors = tensors
        self.mask = mask

    def to(self, device: torch.device | str) -> NestedTensor:
        mask = self.mask.to(device) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device), mask)

    def decompose(self) -> tuple[Tensor, Tensor | None]:
        return self.tensors, self.mask

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={self.mask is not None})"


def nested_tensor_from_tensor_list(tensor_list: Sequence[Tensor]) -> NestedTensor:
    """Pad a list of [C, H_i, W_i] images to [B, C, max H, max W] (zeros at the
    bottom/right) and build the mask (True = padding), as in the paper."""
    if len(tensor_list) == 0:
        raise ValueError("nested_tensor_from_tensor_list needs at least one image")
    if any(t.dim() != 3 for t in tensor_list):
        shapes = [tuple(t.shape) for t in tensor_list]
        raise ValueError(f"expected [C, H, W] images, got shapes {shapes}")
    channels = {int(t.shape[0]) for t in tensor_list}
    if len(channels) != 1:
        raise ValueError(f"images have different channel counts {sorted(channels)}")
    c = channels.pop()
    h = max(int(t.shape[1]) for t in tensor_list)
    w = max(int(t.shape[2]) for t in tensor_list)
    first = tensor_list[0]
    tensors = torch.zeros((len(tensor_list), c, h, w), dtype=first.dtype, device=first.device)
    mask = torch.ones((len(tensor_list), h, w), dtype=torch.bool, device=first.device)
    for img, pad_img, m in zip(tensor_list, tensors, mask):
        pad_img[:, : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], : img.shape[2]] = False
    return NestedTensor(tensors, mask)
