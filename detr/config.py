"""DETR hyper-parameters as a typed dataclass, and the named presets.

The paper presets (``detr-r50`` ... ``detr-r101-dc5``) match the official
facebookresearch/detr defaults (main.py argparse) so official checkpoints load
with ``strict=True``. ``detr-tiny`` is a small from-scratch model for tests,
CI and edge experiments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass(frozen=True)
class DETRConfig:
    """Architecture of one DETR model (the number of classes is passed separately)."""

    name: str = "detr-r50"  # preset this config was derived from (overrides keep the name)
    backbone: str = "resnet50"  # torchvision ResNet name, one of BACKBONES
    dilation: bool = (
        False  # DC5: dilate layer4 instead of striding (output stride 16 instead of 32)
    )
    hidden_dim: int = 256  # d, the transformer width
    nheads: int = 8  # attention heads
    enc_layers: int = 6  # encoder layers
    dec_layers: int = 6  # decoder layers
    dim_feedforward: int = 2048  # FFN inner width
    dropout: float = 0.1  # dropout in the transformer (attention and FFN)
    num_queries: int = 100  # N, object queries = max detections per image
    pre_norm: bool = False  # LayerNorm before attention/FFN (official default: post-norm)
    aux_loss: bool = True  # decoder returns every layer; outputs carry 'aux_outputs'
    # Official DETR freezes BatchNorm (FrozenBatchNorm2d) because it starts from an
    # ImageNet-pretrained ResNet and trains with tiny per-GPU batches.
    frozen_batchnorm: bool = True
    # Official DETR freezes conv1 + layer1 of the pretrained backbone (only layer2-4 train).
    freeze_stem: bool = True
    backbone_weights: str | None = None  # optional local torchvision ResNet state dict (.pth)
    temperature: int = 10000  # sine position encoding temperature

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.dilation and self.backbone in ("resnet18", "resnet34"):
            raise ValueError(
                f"dilation (DC5) needs a bottleneck ResNet (resnet50/101); {self.backbone} "
                "uses BasicBlock which torchvision cannot dilate"
            )
        for name in (
            "hidden_dim",
            "nheads",
            "enc_layers",
            "dec_layers",
            "dim_feedforward",
            "num_queries",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if (
            self.hidden_dim <= 0
            or self.nheads <= 0
            or self.dec_layers <= 0
            or self.num_queries <= 0
        ):
            raise ValueError("hidden_dim, nheads, dec_layers and num_queries must be positive")
        if self.hidden_dim % self.nheads != 0:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}"
            )
        if self.hidden_dim % 2 != 0:
            raise ValueError("hidden_dim must be even (half for y, half for x position encoding)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


_PAPER = DETRConfig()

PRESETS: dict[str, DETRConfig] = {
    "detr-r50": dataclasses.replace(_PAPER, name="detr-r50"),
    "detr-r50-dc5": dataclasses.replace(_PAPER, name="detr-r50-dc5", dilation=True),
    "detr-r101": dataclasses.replace(_PAPER, name="detr-r101", backbone="resnet101"),
    "detr-r101-dc5": dataclasses.replace(
        _PAPER, name="detr-r101-dc5", backbone="resnet101", dilation=True
    ),
    "detr-tiny": DETRConfig(
        name="detr-tiny",
        backbone="resnet18",
        hidden_dim=128,
        nheads=8,
        enc_layers=3,
        dec_layers=3,
        dim_feedforward=512,
        dropout=0.1,
        num_queries=50,
        # Trained from scratch here (no pretrained weights can be downloaded): frozen
        # BN would keep the random-init statistics (mean 0, var 1) forever and the
        # activations would explode/vanish, so tiny uses ordinary BatchNorm2d and
        # trains the whole backbone.
        frozen_batchnorm=False,
        freeze_stem=False,
    ),
}


def get_config(preset: str, **overrides: object) -> DETRConfig:
    """Return the preset's config with ``overrides`` applied and validated.

    Raises ValueError for an unknown preset, an unknown field or a bad value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(DETRConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown DETRConfig override(s) {unknown}; valid fields are {sorted(known)}"
        )
    config = dataclasses.replace(PRESETS[preset], **overrides)  # type: ignore[arg-type]
    config.validate()
    return config


def config_from_dict(data: dict[str, object]) -> DETRConfig:
    """Rebuild a config from ``dataclasses.asdict`` output, ignoring unknown keys
    (written by a newer version) so old readers still load new checkpoints."""
    known = {f.name for f in fields(DETRConfig)}
    config = DETRConfig(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]
    config.validate()
    return config
