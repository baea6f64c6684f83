"""Encoder-decoder transformer of DETR (official ``models/transformer.py`` structure).

Tensors inside are sequence-first like ``nn.MultiheadAttention``'s default:
``src`` [HW, B, d], queries [Q, B, d]. Module names keep the official keys
(``encoder.layers.N.self_attn.in_proj_weight``, ``decoder.norm.weight``, ...).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    # The paper adds positional encodings to queries and keys at every attention
    # layer, never to values.
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self, src: Tensor, src_key_padding_mask: Tensor | None, pos: Tensor | None
    ) -> Tensor:
        """src [HW, B, d], src_key_padding_mask bool [B, HW] (True = padding), pos [HW, B, d]."""
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = _with_pos(src2, pos)
            src2 = self.self_attn(
                q, k, value=src2, key_padding_mask=src_key_padding_mask, need_weights=False
            )[0]
            src = src + self.dropout1(src2)
            src = src + self.dropout2(self._ffn(self.norm2(src)))
            return src
        q = k = _with_pos(src, pos)
        src2 = self.self_attn(
            q, k, value=src, key_padding_mask=src_key_padding_mask, need_weights=False
        )[0]
        src = self.norm1(src + self.dropout1(src2))
        src = self.norm2(src + self.dropout2(self._ffn(src)))
        return src


class TransformerDecoderLayer(nn.Module):
    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        pos: Tensor | None,
        query_pos: Tensor | None,
    ) -> Tensor:
        """tgt [Q, B, d], memory [HW, B, d], memory_key_padding_mask bool [B, HW],
        pos [HW, B, d] (encoder positions), query_pos [Q, B, d] (object queries)."""
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, value=tgt2, need_weights=False)[0])
            tgt2 = self.norm2(tgt)
            tgt2 = self.multihead_attn(
                query=_with_pos(tgt2, query_pos),
                key=_with_pos(memory, pos),
                value=memory,
                key_padding_mask=memory_key_padding_mask,
                need_weights=False,
            )[0]
            tgt = tgt + self.dropout2(tgt2)
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = k = _with_pos(tgt, query_pos)
        tgt2 = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.multihead_attn(
            query=_with_pos(tgt, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    def __init__(
        self, layer: TransformerEncoderLayer, num_layers: int, norm: nn.LayerNorm | None
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm  # only with pre-norm (post-norm layers already end normalised)

    def forward(
        self, src: Tensor, src_key_padding_mask: Tensor | None, pos: Tensor | None
    ) -> Tensor:
        output = src
        for layer in self.layers:
            output = layer(output, src_key_padding_mask=src_key_padding_mask, pos=pos)
        return self.norm(output) if self.norm is not None else output


class TransformerDecoder(nn.Module):
    def __init__(
        self,
        layer: TransformerDecoderLayer,
        num_layers: int,
        norm: nn.LayerNorm,
        return_intermediate: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm  # shared final LayerNorm, applied to every returned layer output
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None,
        pos: Tensor | None,
        query_pos: Tensor | None,
    ) -> Tensor:
        """-> [L, Q, B, d] with L = num_layers if return_intermediate else 1; each
        entry passed through the shared final norm (aux losses use them)."""
        output = tgt
        intermediate: list[Tensor] = []
        for layer in self.layers:
            output = layer(
                output,
                memory,
                memory_key_padding_mask=memory_key_padding_mask,
                pos=pos,
                query_pos=query_pos,
            )
            if self.return_intermediate:
                intermediate.append(self.norm(output))
        if self.return_intermediate:
            return torch.stack(intermediate)
        return self.norm(output).unsqueeze(0)


class Transformer(nn.Module):
    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
        return_intermediate_dec: bool = True,
    ) -> None:
        super().__init__()
        enc_layer = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before
        )
        self.encoder = TransformerEncoder(
            enc_layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None
        )
        dec_layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before
        )
        self.decoder = TransformerDecoder(
            dec_layer, num_decoder_layers, nn.LayerNorm(d_model), return_intermediate_dec
        )
        self.d_model = d_model
        self.nhead = nhead
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Official init: Xavier-uniform on every matrix, PyTorch defaults elsewhere.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor
    ) -> tuple[Tensor, Tensor]:
        """src [B, d, h, w] (projected features), mask bool [B, h, w] (True = padding),
        query_embed [Q, d], pos_embed [B, d, h, w]
        -> (hs [L, B, Q, d] decoder outputs, memory [B, d, h, w])."""
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # [HW, B, d]
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)  # [HW, B, d]
        query_pos = query_embed.unsqueeze(1).repeat(1, bs, 1)  # [Q, B, d]
        mask_flat = mask.flatten(1)  # [B, HW]
        tgt = torch.zeros_like(query_pos)  # decoder input starts at zero; queries act via query_pos
        memory = self.encoder(src, src_key_padding_mask=mask_flat, pos=pos_embed)
        hs = self.decoder(
            tgt, memory, memory_key_padding_mask=mask_flat, pos=pos_embed, query_pos=query_pos
        )
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(bs, c, h, w)
