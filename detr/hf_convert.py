"""Convert Hugging Face ``DetrForObjectDetection`` state dicts to official DETR keys.

Key mapping (HF -> official), after normalising the two HF generations
(transformers 4.x hub files: ``model.backbone.conv_encoder.model.*``,
``out_proj``, ``fc1``; transformers 5.x: ``model.backbone.model.*``,
``o_proj``, ``mlp.fc1``):

==========================================================  ==========================================
``model.backbone.model.{conv1,bn1,layerN...}`` (timm)       ``backbone.0.body.{same}`` (timm ResNet
                                                            uses torchvision's names)
``model.backbone.model.embedder.embedder.convolution``      ``backbone.0.body.conv1``
``...embedder.embedder.normalization``                      ``backbone.0.body.bn1``
``...encoder.stages.S.layers.I.shortcut.convolution``       ``backbone.0.body.layer{S+1}.I.downsample.0``
``...encoder.stages.S.layers.I.shortcut.normalization``     ``backbone.0.body.layer{S+1}.I.downsample.1``
``...encoder.stages.S.layers.I.layer.J.convolution``        ``backbone.0.body.layer{S+1}.I.conv{J+1}``
``...encoder.stages.S.layers.I.layer.J.normalization``      ``backbone.0.body.layer{S+1}.I.bn{J+1}``
``model.input_projection``                                  ``input_proj``
``model.query_position_embeddings``                         ``query_embed``
``model.encoder.layers.N.self_attn.{q,k,v}_proj``           ``transformer.encoder.layers.N.self_attn.
                                                            in_proj_{weight,bias}`` (q, k, v stacked)
``...self_attn.out_proj``                                   ``...self_attn.out_proj``
``model.encoder.layers.N.self_attn_layer_norm``             ``...encoder.layers.N.norm1``
``model.encoder.layers.N.final_layer_norm``                 ``...encoder.layers.N.norm2``
``model.{en,de}coder.layers.N.fc1 / fc2``                   ``...layers.N.linear1 / linear2``
``model.decoder.layers.N.encoder_attn.*``                   ``...decoder.layers.N.multihead_attn.*``
``model.decoder.layers.N.self_attn_layer_norm``             ``...decoder.layers.N.norm1``
``model.decoder.layers.N.encoder_attn_layer_norm``          ``...decoder.layers.N.norm2``
``model.decoder.layers.N.final_layer_norm``                 ``...decoder.layers.N.norm3``
``model.decoder.layernorm``                                 ``transformer.decoder.norm``
``class_labels_classifier``                                 ``class_embed``
``bbox_predictor.layers.N``                                 ``bbox_embed.layers.N``
==========================================================  ==========================================

BatchNorm ``num_batches_tracked`` buffers are dropped (DETR's BN is frozen).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

_HF_MARKERS = ("model.query_position_embeddings.weight", "class_labels_classifier.weight")

_LAYER_RENAMES = {
    "encoder": {
        "self_attn_layer_norm": "norm1",
        "final_layer_norm": "norm2",
        "fc1": "linear1",
        "fc2": "linear2",
        "self_attn": "self_attn",
    },
    "decoder": {
        "self_attn_layer_norm": "norm1",
        "encoder_attn_layer_norm": "norm2",
        "final_layer_norm": "norm3",
        "fc1": "linear1",
        "fc2": "linear2",
        "self_attn": "self_attn",
        "encoder_attn": "multihead_attn",
    },
}

_HF_RESNET = re.compile(
    r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(shortcut|layer\.(\d+))\.(convolution|normalization)\.(.+)"
)
_LAYER = re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.([a-z0-9_]+)\.(.+)")


def is_hf_state_dict(state: Mapping[str, object]) -> bool:
    """True if the keys look like a Hugging Face DetrForObjectDetection state dict."""
    return any(marker in state for marker in _HF_MARKERS)


def _normalise_hf_key(key: str) -> str:
    # Bring transformers 5.x names back to the 4.x hub names, then map those.
    key = key.replace("model.backbone.conv_encoder.", "model.backbone.")
    key = key.replace(".o_proj.", ".out_proj.")
    key = re.sub(r"\.mlp\.(fc[12])\.", r".\1.", key)
    return key


def _map_backbone_key(rest: str) -> str:
    """``rest`` = key after ``model.backbone.model.`` -> key after ``backbone.0.body.``."""
    if rest.startswith("embedder.embedder."):
        leaf = rest[len("embedder.embedder.") :]
        module, _, param = leaf.partition(".")
        return ("conv1." if module == "convolution" else "bn1.") + param
    match = _HF_RESNET.fullmatch(rest)
    if match:
        stage, index, which, j, kind, param = match.groups()
        prefix = f"layer{int(stage) + 1}.{index}."
        if which == "shortcut":
            return prefix + ("downsample.0." if kind == "convolution" else "downsample.1.") + param
        n = int(j) + 1
        return prefix + (f"conv{n}." if kind == "convolution" else f"bn{n}.") + param
    return rest  # timm ResNet: torchvision names already


def hf_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an HF DETR state dict to official DETR keys (q/k/v projections stacked
    into ``in_proj_weight`` [3d, d] / ``in_proj_bias`` [3d]). Keys it cannot map are
    kept unchanged, so the caller's strict load lists them as unexpected."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for raw_key, value in state.items():
        key = _normalise_hf_key(raw_key)
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("model.backbone.model."):
            out["backbone.0.body." + _map_backbone_key(key[len("model.backbone.model.") :])] = value
        elif key.startswith("model.input_projection."):
            out["input_proj." + key[len("model.input_projection.") :]] = value
        elif key == "model.query_position_embeddings.weight":
            out["query_embed.weight"] = value
        elif key.startswith("model.decoder.layernorm."):
            out["transformer.decoder.norm." + key[len("model.decoder.layernorm.") :]] = value
        elif key.startswith("class_labels_classifier."):
            out["class_embed." + key[len("class_labels_classifier.") :]] = value
        elif key.startswith("bbox_predictor."):
            out["bbox_embed." + key[len("bbox_predictor.") :]] = value
        elif (match := _LAYER.fullmatch(key)) is not None:
            part, index, module, param = match.groups()
            renamed = _LAYER_RENAMES[part].get(module)
            if renamed is None:
                out[raw_key] = value
                continue
            prefix = f"transformer.{part}.layers.{index}.{renamed}."
            proj = re.fullmatch(r"([qkv])_proj\.(weight|bias)", param)
            if proj is not None:
                qkv.setdefault(prefix + "in_proj_" + proj.group(2), {})[proj.group(1)] = value
            else:
                out[prefix + param] = value
        else:
            out[raw_key] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            # Incomplete triple: leave the parts under their HF names (reported as
            # unexpected) rather than guessing.
            for letter, tensor in parts.items():
                out[f"{key}.{letter}_proj_incomplete"] = tensor
            continue
        # nn.MultiheadAttention packs the projections as rows [q; k; v].
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
