"""What a checkpoint file says about its model, in each of the three formats.

Our own checkpoints store the architecture (``config``); official
facebookresearch/detr checkpoints store ``args`` (or nothing, for bare state
dicts) and Hugging Face weights come with ``config.json``. Whatever is not
stored is inferred from the tensor names and shapes. ``detr.checkpoint`` reads
the file, picks the parser and builds the model from the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from detr import checkpoint_schema as schema
from detr.config import PRESETS, DETRConfig, config_from_dict
from detr.hf_convert import hf_to_official
from detr.training_resize import CHECKPOINT_KEY as RESIZE_KEY
from runtime.errors import ModelFormatError


@dataclass
class FoundModel:
    """What a checkpoint file says about its model, before the model is built."""

    state: Mapping[str, Any]  # state dict in official key names
    config: DETRConfig  # the architecture stored or inferred
    num_classes: int  # real classes of the stored class head
    source_format: str  # 'detr-edge' | 'official' | 'hf'


def parse_own(raw: dict[str, Any], file: Path) -> FoundModel:
    """Our own format: the architecture is stored (``config``), the cheap checks first."""
    schema.check_config_dict(raw["config"], file)
    schema.check_train_config(raw.get("train_config"), file)
    schema.check_resize_record(raw.get(RESIZE_KEY), file)
    state = schema.check_state_dict(raw["model"], file, "model")
    schema.check_detr_shapes(state, file)
    try:
        config = config_from_dict(dict(raw["config"]))
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(file, f"inconsistent architecture in checkpoint: {exc}") from exc
    stored_classes = (schema.check_num_classes(raw["num_classes"], file)
                      if "num_classes" in raw else _classes_in(state, file))
    return FoundModel(state, config, stored_classes, "detr-edge")


def parse_hf(raw: dict[str, Any], file: Path, hf_config: dict[str, Any] | None) -> FoundModel:
    """Hugging Face weights: renamed to official keys; architecture from config.json."""
    state = hf_to_official(schema.check_state_dict(raw, file))
    schema.check_detr_shapes(state, file)
    config = infer_config(state, file, hf_config=hf_config)
    return FoundModel(state, config, _classes_in(state, file), "hf")


def parse_official(raw: dict[str, Any], file: Path) -> FoundModel:
    """facebookresearch/detr: ``{'model': state_dict, 'args': Namespace}`` or a bare
    state dict; architecture from ``args`` where present, else from the shapes."""
    state = dict(raw["model"]) if isinstance(raw.get("model"), Mapping) else raw
    if "query_embed.weight" not in state:
        raise ModelFormatError(
            file,
            "not a DETR checkpoint (no 'query_embed.weight' and no Hugging Face DETR keys)",
        )
    state = schema.check_state_dict(state, file, "model")
    schema.check_detr_shapes(state, file)
    args = raw.get("args")
    if isinstance(args, argparse.Namespace):
        schema.check_official_args(args, file)
    else:
        args = None
    config = infer_config(state, file, args=args)
    return FoundModel(state, config, _classes_in(state, file), "official")


def _classes_in(state: Mapping[str, Any], file: Path) -> int:
    weight = state.get("class_embed.weight")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ModelFormatError(file, "no class_embed.weight [K+1, d] in the checkpoint")
    return int(weight.shape[0]) - 1


def _count_indexed(state: Mapping[str, Any], prefix: str) -> int:
    """Number of ``prefix<N>.`` modules (e.g. layers of the encoder)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_config(
    state: Mapping[str, Any],
    file: Path,
    args: argparse.Namespace | None = None,
    hf_config: dict[str, Any] | None = None,
) -> DETRConfig:
    """Architecture from ``args`` (official), ``config.json`` (HF) or the tensor shapes.

    Shapes give the ResNet depth (layer3 block count + bottleneck or not), d,
    queries, layer counts, FFN width and pre-norm; heads and DC5 cannot be seen in
    shapes and default to 8 and False when no args/config.json says otherwise.
    """
    values = _shape_values(state, file)
    if args is not None:
        for field in ("dilation", "nheads", "dropout", "aux_loss", "pre_norm"):
            if hasattr(args, field):
                values[field] = getattr(args, field)
    if hf_config is not None:
        values["nheads"] = int(hf_config.get("encoder_attention_heads", 8))
        values["dilation"] = bool(hf_config.get("dilation") or False)
        values["dropout"] = float(hf_config.get("dropout", 0.1))
    base = DETRConfig(**values)
    for preset in PRESETS.values():  # report the preset name when it is one
        if dataclasses.replace(preset, name=base.name) == base:
            return preset
    try:
        base = dataclasses.replace(base, name="custom")
        base.validate()
    except ValueError as exc:
        raise ModelFormatError(file, f"inconsistent architecture in checkpoint: {exc}") from exc
    return base


def _shape_values(state: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """The ``DETRConfig`` fields that the tensor names and shapes of ``state`` show."""
    query = state["query_embed.weight"]  # [num_queries, hidden_dim]
    linear1 = state.get(
        "transformer.encoder.layers.0.linear1.weight",
        state.get("transformer.decoder.layers.0.linear1.weight"),
    )
    # A trained nn.BatchNorm2d stores num_batches_tracked in every BN layer; frozen BN
    # never does (a stray one from a torchvision state dict does not count).
    frozen = not _all_bn_track_batches(state)
    return {
        "backbone": _backbone_depth(state, file),
        "hidden_dim": int(query.shape[1]),
        "num_queries": int(query.shape[0]),
        "enc_layers": _count_indexed(state, "transformer.encoder.layers."),
        "dec_layers": _count_indexed(state, "transformer.decoder.layers."),
        "dim_feedforward": int(linear1.shape[0]) if isinstance(linear1, Tensor) else 2048,
        "pre_norm": "transformer.encoder.norm.weight" in state,
        "frozen_batchnorm": frozen,
        "freeze_stem": frozen,
    }


def _backbone_depth(state: Mapping[str, Any], file: Path) -> str:
    """torchvision ResNet name from the layer3 block count and the block type."""
    layer3 = _count_indexed(state, "backbone.0.body.layer3.")
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state
    depth = {
        (2, False): "resnet18",
        (6, False): "resnet34",
        (6, True): "resnet50",
        (23, True): "resnet101",
    }.get((layer3, bottleneck))
    if depth is None:
        raise ModelFormatError(
            file,
            f"unsupported backbone: layer3 has {layer3} blocks "
            f"({'bottleneck' if bottleneck else 'basic'})",
        )
    return depth


def _all_bn_track_batches(state: Mapping[str, Any]) -> bool:
    means = [k for k in state if k.startswith("backbone.") and k.endswith(".running_mean")]
    tracked = [k for k in state if k.startswith("backbone.") and k.endswith("num_batches_tracked")]
    return bool(means) and len(tracked) == len(means)
