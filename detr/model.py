"""The DETR detector (backbone -> input_proj -> transformer -> class/box heads)
and ``build_model``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr.backbone import Joiner, build_backbone
from detr.config import DETRConfig, get_config
from detr.nested_tensor import NestedTensor, nested_tensor_from_tensor_list
from detr.transformer import Transformer


class MLP(nn.Module):
    """Feed-forward head: ``num_layers`` Linear layers with ReLU between
    (official ``MLP``; keys ``bbox_embed.layers.{0,1,2}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.num_layers = num_layers

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class DETR(nn.Module):
    """DETR: predicts ``num_queries`` (class, box) pairs per image in one pass.

    ``num_classes`` excludes the no-object class; ``class_embed`` has
    ``num_classes + 1`` outputs, the last one being no-object.
    """

    def __init__(
        self,
        backbone: Joiner,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
        aux_loss: bool,
        config: DETRConfig | None = None,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.config = config

    def forward(
        self,
        images: Tensor | NestedTensor | Sequence[Tensor],
        mask: Tensor | None = None,
    ) -> dict[str, Any]:
        """images: float [B, 3, H, W] (ImageNet-normalised), a list of [3, H_i, W_i]
        (zero-padded bottom/right to a batch) or a NestedTensor. mask: optional bool
        [B, H, W], True = padding (only with a tensor input).

        Returns {'pred_logits': [B, Q, K+1], 'pred_boxes': [B, Q, 4] normalised cxcywh
        in [0, 1] relative to the valid (unpadded) image, and with aux_loss
        'aux_outputs': [{'pred_logits', 'pred_boxes'}] for decoder layers 0..L-2}.
        """
        samples = self._to_nested(images, mask)
        features, pos = self.backbone(samples)
        src, src_mask = features[-1].decompose()
        assert src_mask is not None
        hs = self.transformer(self.input_proj(src), src_mask, self.query_embed.weight, pos[-1])[0]
        outputs_class = self.class_embed(hs)  # [L, B, Q, K+1]
        outputs_coord = self.bbox_embed(hs).sigmoid()  # [L, B, Q, 4] cxcywh in [0, 1]
        out: dict[str, Any] = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b}
                for a, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        return out

    @staticmethod
    def _to_nested(
        images: Tensor | NestedTensor | Sequence[Tensor], mask: Tensor | None
    ) -> NestedTensor:
        if isinstance(images, NestedTensor):
            if mask is not None:
                raise ValueError("pass the mask inside the NestedTensor, not as well as it")
            if images.mask is None:
                t = images.tensors
                return NestedTensor(
                    t,
                    torch.zeros(
                        t.shape[0], t.shape[2], t.shape[3], dtype=torch.bool, device=t.device
                    ),
                )
            return images
        if isinstance(images, (list, tuple)):
            if mask is not None:
                raise ValueError("a list of images builds its own mask; do not pass one")
            return nested_tensor_from_tensor_list(images)
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be float [B, 3, H, W], got {shape}")
        b, _, h, w = images.shape
        if mask is None:
            mask = torch.zeros((b, h, w), dtype=torch.bool, device=images.device)
        elif mask.shape != (b, h, w) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool [{b}, {h}, {w}], got {mask.dtype} {tuple(mask.shape)}"
            )
        return NestedTensor(images, mask)


def build_model_from_config(config: DETRConfig, num_classes: int) -> DETR:
    """Build a randomly initialised DETR (backbone from ``config.backbone_weights``
    if given) for ``num_classes`` real classes."""
    config.validate()
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    transformer = Transformer(
        d_model=config.hidden_dim,
        nhead=config.nheads,
        num_encoder_layers=config.enc_layers,
        num_decoder_layers=config.dec_layers,
        dim_feedforward=config.dim_feedforward,
        dropout=config.dropout,
        normalize_before=config.pre_norm,
        return_intermediate_dec=config.aux_loss,
    )
    return DETR(
        build_backbone(config),
        transformer,
        num_classes=num_classes,
        num_queries=config.num_queries,
        aux_loss=config.aux_loss,
        config=config,
    )


def build_model(preset: str, num_classes: int, **overrides: Any) -> DETR:
    """``build_model("detr-tiny", 3, num_queries=20)``; ValueError for an unknown preset,
    unknown override field or invalid value."""
    return build_model_from_config(get_config(preset, **overrides), num_classes)
