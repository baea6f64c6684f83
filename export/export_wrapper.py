"""The traceable module that becomes the ONNX graph.

``ExportWrapper(model, height, width, with_mask)`` runs the same DETR as
``model(images[, mask])`` but without NestedTensor batching logic, without the
auxiliary decoder outputs and, for a fixed input size without mask, with the
sine positional encoding precomputed as a constant tensor:

- No CumSum in the graph: TensorRT 10.8-10.11 computes several CumSum axes
  wrongly (onnx-tensorrt#1034). Without a mask the encoding depends only on the
  feature-map size, so it is a buffer computed here; with a mask the model's
  ``PositionEmbeddingSine`` already replaces the cumulative sum by a matmul with
  a constant triangular matrix.
- Really dynamic batch: the official export bakes the batch size into the graph
  through NestedTensor padding (facebookresearch/detr#556); here the batch axis
  only flows through Expand/Tile of the constant encoding and query embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ExportWrapper(nn.Module):
    """images float32 [B, 3, H, W] (ImageNet-normalised) [+ mask bool [B, H, W],
    True = padding] -> (logits [B, Q, K+1], boxes [B, Q, 4] normalised cxcywh).

    Without mask the boxes refer to the whole canvas; with mask to the valid region.
    """

    def __init__(self, model: Any, height: int, width: int, with_mask: bool = False) -> None:
        # model: a detr.DETR (typed Any: its submodules are reached by attribute)
        super().__init__()
        joiner = model.backbone
        self.body = joiner[0].body  # ResNet trunk -> {'0': C5 features}
        self.position_embedding = joiner[1]  # PositionEmbeddingSine(mask [B,h,w]) -> [B,d,h,w]
        self.input_proj = model.input_proj
        self.encoder = model.transformer.encoder
        self.decoder = model.transformer.decoder
        self.query_embed = model.query_embed
        self.class_embed = model.class_embed
        self.bbox_embed = model.bbox_embed
        self.with_mask = with_mask
        self.height, self.width = height, width
        with torch.no_grad():
            param = next(model.parameters())
            probe = torch.zeros(1, 3, height, width, dtype=param.dtype, device=param.device)
            feat_h, feat_w = self.body(probe)["0"].shape[-2:]
            no_padding = torch.zeros(1, feat_h, feat_w, dtype=torch.bool, device=param.device)
            pos = self.position_embedding(no_padding)  # [1, d, h, w]
        self.feature_size = (int(feat_h), int(feat_w))
        # Constant encoding for the no-mask graph (see module docstring: no CumSum).
        self.register_buffer("pos_const", pos, persistent=False)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        src = self.body(images)["0"]  # [B, C, h, w]
        bs = src.shape[0]
        if self.with_mask:
            if mask is None:
                raise ValueError("this wrapper was built with_mask=True: pass mask [B, H, W]")
            # Nearest downsampling of the padding mask, as the model's Backbone does.
            feat_mask = F.interpolate(mask[None].float(), size=self.feature_size).to(torch.bool)[0]
            pos = self.position_embedding(feat_mask)  # [B, d, h, w]
            key_padding_mask: Tensor | None = feat_mask.flatten(1)  # [B, hw]
        else:
            pos_const: Tensor = self.pos_const  # type: ignore[assignment]  # a buffer
            pos = pos_const.expand(bs, -1, -1, -1)  # [B, d, h, w]
            key_padding_mask = None  # no padding: the all-False mask is dropped from the graph
        src = self.input_proj(src).flatten(2).permute(2, 0, 1)  # [hw, B, d]
        pos = pos.flatten(2).permute(2, 0, 1)  # [hw, B, d]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)  # [Q, B, d]
        tgt = torch.zeros_like(query_pos)
        memory = self.encoder(src, src_key_padding_mask=key_padding_mask, pos=pos)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=key_padding_mask, pos=pos,
                          query_pos=query_pos)  # [L, Q, B, d]
        last = hs[-1].transpose(0, 1)  # [B, Q, d]: only the last decoder layer is deployed
        logits = self.class_embed(last)  # [B, Q, K+1]
        boxes = self.bbox_embed(last).sigmoid()  # [B, Q, 4] cxcywh in [0, 1]
        return logits, boxes
