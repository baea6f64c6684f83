"""ResNet backbone + position encoding joined as in official DETR.

Module structure (and so state-dict keys) follows the official code:
``backbone.0.body.<resnet module>`` for the ResNet trunk (conv1 ... layer4,
no avgpool/fc) and ``backbone.1`` for the parameter-free position encoding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from detr.bn_fold import FoldedTrunk, fast_path_allowed
from detr.config import DETRConfig
from detr.frozen_batchnorm import FrozenBatchNorm2d
from detr.nested_tensor import NestedTensor
from detr.position_encoding import PositionEmbeddingSine
from runtime.errors import ModelFormatError


class Backbone(nn.Module):
    """ResNet trunk returning the layer4 feature map ("C5") with its downsampled mask."""

    def __init__(self, config: DETRConfig) -> None:
        super().__init__()
        norm_layer = FrozenBatchNorm2d if config.frozen_batchnorm else nn.BatchNorm2d
        resnet = getattr(torchvision.models, config.backbone)(
            weights=None,  # never download; local weights via backbone_weights
            replace_stride_with_dilation=[False, False, config.dilation],
            norm_layer=norm_layer,
        )
        if config.backbone_weights:
            _load_resnet_weights(resnet, config.backbone_weights)
        for name, parameter in resnet.named_parameters():
            # Official: with a pretrained backbone only layer2-4 are trained.
            if config.freeze_stem and not name.startswith(("layer2", "layer3", "layer4")):
                parameter.requires_grad_(False)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})
        self.num_channels = 512 if config.backbone in ("resnet18", "resnet34") else 2048
        # Eval-mode inference runs the trunk with BatchNorm folded into the convs
        # (detr.bn_fold: same outputs up to float rounding; no state-dict change).
        self.folded = FoldedTrunk()

    def forward(self, samples: NestedTensor) -> dict[str, NestedTensor]:
        """samples: images [B,3,H,W], mask [B,H,W] -> {'0': features [B,C,H/s,W/s] + mask}
        with s = 32 (16 for DC5)."""
        if fast_path_allowed(self) and self.folded.supports(self.body):
            xs = {"0": self.folded(self.body, samples.tensors)}
        else:
            xs = self.body(samples.tensors)
        out: dict[str, NestedTensor] = {}
        for name, x in xs.items():
            mask = samples.mask
            assert mask is not None
            # Nearest-neighbour downsampling of the padding mask, as official.
            m = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
            out[name] = NestedTensor(x, m)
        return out


class Joiner(nn.Sequential):
    """``Sequential(backbone, position_embedding)`` only to keep the official keys."""

    def __init__(self, backbone: Backbone, position_embedding: PositionEmbeddingSine) -> None:
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels

    def forward(self, samples: NestedTensor) -> tuple[list[NestedTensor], list[Tensor]]:  # type: ignore[override]
        """-> ([features NestedTensor], [pos float [B, d, h, w]]) like the official Joiner."""
        xs = self[0](samples)
        out: list[NestedTensor] = []
        pos: list[Tensor] = []
        for x in xs.values():
            out.append(x)
            assert x.mask is not None
            pos.append(self[1](x.mask).to(x.tensors.dtype))
        return out, pos


def build_backbone(config: DETRConfig) -> Joiner:
    position_embedding = PositionEmbeddingSine(
        config.hidden_dim // 2, temperature=config.temperature, normalize=True
    )
    return Joiner(Backbone(config), position_embedding)


def _load_resnet_weights(resnet: nn.Module, path: str) -> None:
    """Load a local torchvision ResNet state dict (fc.* ignored) with safe unpickling."""
    if not Path(path).is_file():
        raise ModelFormatError(path, "backbone_weights file does not exist")
    from detr.checkpoint_schema import check_state_dict, torch_load

    state = torch_load(Path(path), "backbone weights file")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelFormatError(path, "expected a ResNet state dict")
    state = check_state_dict(state, Path(path), "ResNet state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        result = resnet.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch, e.g. resnet50 weights for resnet18
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ModelFormatError(path, f"ResNet weights do not fit: {first[0].strip()}") from exc
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ModelFormatError(
            path,
            f"not a matching ResNet state dict: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}",
        )
