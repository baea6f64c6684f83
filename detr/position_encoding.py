"""Sine position encoding of the paper (official ``PositionEmbeddingSine``,
normalize=True, scale=2*pi, eps=1e-6, temperature=10000)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cumsum_by_matmul(values: Tensor, dim: int) -> Tensor:
    """Cumulative sum of ``values`` [B, h, w] along ``dim`` (1 or 2) computed as a
    matmul with a constant triangular ones matrix.

    Why not ``torch.cumsum``: it exports to ONNX ``CumSum``, which TensorRT
    10.8-10.11 computes wrongly on several axes (onnx-tensorrt#1034). A matmul of
    0/1 values is exact in fp32 (and fp16 up to 2048) and runs everywhere. The
    triangle is built from ``arange`` comparisons, not ``tril`` (no ONNX Trilu).
    """
    n = values.shape[dim]
    idx = torch.arange(n, device=values.device)
    if dim == 1:
        # lower[i, k] = 1 where k <= i:  out[b, i, j] = sum_k lower[i, k] * v[b, k, j]
        lower = (idx[None, :] <= idx[:, None]).to(values.dtype)
        return torch.matmul(lower, values)
    if dim == 2:
        # upper[k, j] = 1 where k <= j:  out[b, i, j] = sum_k v[b, i, k] * upper[k, j]
        upper = (idx[:, None] <= idx[None, :]).to(values.dtype)
        return torch.matmul(values, upper)
    raise ValueError(f"cumsum_by_matmul supports dim 1 or 2, got {dim}")


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine encoding; no parameters (so ``backbone.1`` has no keys)."""

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True")
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: Tensor) -> Tensor:
        """mask bool [B, h, w] (True = padding) -> pos float32 [B, 2*num_pos_feats, h, w];
        channels are the y half then the x half, each interleaving sin/cos."""
        not_mask = (~mask).to(torch.float32)
        y_embed = cumsum_by_matmul(not_mask, 1)  # [B, h, w] row index of valid pixels, 1-based
        x_embed = cumsum_by_matmul(not_mask, 2)
        if self.normalize:
            eps = 1e-6
            # Normalise by the valid extent of each image so padding does not shift
            # the encoding (last valid row/col -> scale).
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, :, None] / dim_t  # [B, h, w, F]
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2F, h, w]
