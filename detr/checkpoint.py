"""Save and load DETR checkpoints: our own format, official facebookresearch/detr
checkpoints and Hugging Face ``facebook/detr-*`` weights.

Loading never executes code from the file: ``torch.load(weights_only=True)``
with an allow-list of only ``argparse.Namespace`` (the ``args`` entry of
official training checkpoints). Anything else in the pickle is refused with a
ModelFormatError naming the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detr import checkpoint_schema as schema
from detr.checkpoint_formats import parse_hf, parse_official, parse_own
from detr.config import DETRConfig, get_config
from detr.hf_convert import is_hf_state_dict
from detr.model import DETR, build_model_from_config
from runtime import json_limits
from runtime.atomic import atomic_write_bytes
from runtime.errors import InputError, ModelFormatError
from runtime.files import is_regular, kind_of
from runtime.version import package_version

# Globals an official checkpoint may reference besides tensors and plain containers.
SAFE_GLOBALS: list[Any] = [argparse.Namespace]

_HF_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_LISTED = 5  # keys listed per category in mismatch messages
_MAX_CONFIG_BYTES = 16 * 1024 * 1024  # an HF config.json is a few kB


@dataclass
class LoadedCheckpoint:
    """Everything a checkpoint provides. ``model`` is in eval mode."""

    model: DETR
    config: DETRConfig
    class_names: list[str]  # one per real class, contiguous index order
    label_map: list[int]  # contiguous index -> dataset category id
    raw: dict[str, Any]  # the unpickled file (own/official) or {'model': state_dict} (HF)
    num_classes: int = 0  # real classes (class_embed has num_classes + 1 outputs)
    source_format: str = "detr-edge"  # 'detr-edge' | 'official' | 'hf'

    @property
    def preset(self) -> str:
        """The model's preset name: the one the checkpoint recorded, else its config's
        (a preset's name when the architecture is one, else "custom")."""
        recorded = self.raw.get("preset") if isinstance(self.raw, dict) else None
        return str(recorded or self.config.name or "custom")


def save_checkpoint(
    path: str | Path,
    model: DETR,
    config: DETRConfig,
    class_names: list[str],
    label_map: list[int],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``{'model', 'config', 'preset', 'num_classes', 'class_names', 'label_map',
    'detr_edge_version'} | extra`` atomically (training adds optimizer, epoch, ...)."""
    if len(class_names) != model.num_classes or len(label_map) != model.num_classes:
        raise InputError(
            "class_names/label_map",
            f"need {model.num_classes} entries each (the model's num_classes), got "
            f"{len(class_names)} names and {len(label_map)} label ids",
        )
    payload: dict[str, Any] = {
        "model": model.state_dict(),
        "config": dataclasses.asdict(config),
        "preset": config.name,
        "num_classes": model.num_classes,
        "class_names": list(class_names),
        "label_map": [int(i) for i in label_map],
        "detr_edge_version": package_version(),
    }
    for key, value in (extra or {}).items():
        if key in payload:
            raise InputError("extra", f"key {key!r} is reserved by the checkpoint format")
        payload[key] = value
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_model(path: str | Path, preset: str | None = None, num_classes: int | None = None) -> DETR:
    """Load any supported checkpoint and return just the model (eval mode)."""
    return load_checkpoint(path, preset=preset, num_classes=num_classes).model


def load_checkpoint(
    path: str | Path, preset: str | None = None, num_classes: int | None = None
) -> LoadedCheckpoint:
    """Load our own, an official DETR or a Hugging Face DETR checkpoint.

    ``path`` may be a file (.pth/.pt/.bin/.safetensors) or an HF snapshot folder
    (model.safetensors or pytorch_model.bin, optional config.json). ``preset``
    overrides the inferred architecture (needed e.g. for DC5 weights without
    ``args``, which are shape-identical to non-DC5 ones); ``num_classes`` must then
    match the checkpoint. Raises ModelFormatError for a missing, truncated, unsafe
    or mismatching file.
    """
    file = _resolve_file(Path(path))
    raw = _read(file)
    hf_config = _read_hf_config(file)
    if isinstance(raw.get("model"), Mapping) and isinstance(raw.get("config"), Mapping):
        found = parse_own(raw, file)
    elif is_hf_state_dict(raw):
        found = parse_hf(raw, file, hf_config)
    else:
        found = parse_official(raw, file)
    config = found.config if preset is None else _preset_config(preset, file)
    schema.check_model_config(config, file)
    wanted = found.num_classes if num_classes is None else num_classes
    if wanted != found.num_classes:
        raise ModelFormatError(
            file,
            f"checkpoint has {found.num_classes} classes (class_embed has "
            f"{found.num_classes + 1} outputs incl. no-object) but num_classes={wanted} "
            "was requested",
        )
    # The file holds every weight: a backbone_weights path recorded at training time
    # (pretrain-backbone output, usually not shipped with the checkpoint) is provenance only.
    config = dataclasses.replace(config, backbone_weights=None)
    model = build_model_from_config(config, wanted)
    _load_strict(model, found.state, file, config)
    model.eval()
    names, label_map = _class_info(raw, hf_config, wanted, found.source_format, file)
    return LoadedCheckpoint(
        model=model,
        config=config,
        class_names=names,
        label_map=label_map,
        raw=raw if found.source_format != "hf" else {"model": raw},
        num_classes=wanted,
        source_format=found.source_format,
    )


def _preset_config(preset: str, file: Path) -> DETRConfig:
    """The architecture named by ``--preset`` (overrides the checkpoint's own)."""
    try:
        return get_config(preset)
    except ValueError as exc:
        raise ModelFormatError(file, str(exc)) from exc


def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        for name in _HF_FILES:
            if (path / name).is_file():
                return path / name
        raise ModelFormatError(path, f"folder has none of {list(_HF_FILES)}")
    if not path.exists():
        raise ModelFormatError(path, "checkpoint file does not exist")
    if not is_regular(path):  # a FIFO or device would block or read forever
        raise ModelFormatError(path, f"is {kind_of(path.stat().st_mode)}, not a checkpoint file")
    return path


def _read(file: Path) -> dict[str, Any]:
    """Unpickle (safely) or read safetensors; always returns a dict."""
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(file), device="cpu"))
        except Exception as exc:
            raise ModelFormatError(
                file, f"unreadable safetensors file (truncated or corrupt): {exc}"
            ) from exc
    data = schema.torch_load(file, "checkpoint", SAFE_GLOBALS)
    if not isinstance(data, dict):
        raise ModelFormatError(file, f"expected a dict checkpoint, got {type(data).__name__}")
    return data


def _read_hf_config(file: Path) -> dict[str, Any] | None:
    """The DETR ``config.json`` next to HF weights (``id2label`` keys as ints), else None."""
    cfg = file.parent / "config.json"
    if not cfg.is_file():
        return None
    doc = json_limits.read_json_file(cfg, what="Hugging Face config", error=ModelFormatError,
                                     max_bytes=_MAX_CONFIG_BYTES)
    return schema.check_hf_config(doc, cfg)


def _load_strict(model: DETR, state: Mapping[str, Any], file: Path, config: DETRConfig) -> None:
    """load_state_dict(strict=True) with a readable ModelFormatError on mismatch.

    ``num_batches_tracked`` is ignored both ways (frozen BN has none; it does not
    change the forward pass)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k} (checkpoint {list(v.shape)} vs model {list(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and isinstance(v, Tensor) and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:_MAX_LISTED])
                more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
                parts.append(f"{len(keys)} {label} key(s): {shown}{more}")
        raise ModelFormatError(
            file,
            f"checkpoint does not match {config.name} with {model.num_classes} classes: "
            + "; ".join(parts),
        )
    filtered = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(filtered, strict=False)


def _class_info(
    raw: Mapping[str, Any], hf_config: dict[str, Any] | None, num_classes: int, fmt: str,
    file: Path,
) -> tuple[list[str], list[int]]:
    if fmt == "detr-edge":
        names, label_map = raw.get("class_names", []), raw.get("label_map", [])
        # Checked here, naming the file: a mismatch would otherwise surface later as an
        # invalid export metadata or wrong category ids in evaluation.
        if not (isinstance(names, list) and len(names) == num_classes
                and all(isinstance(n, str) for n in names)):
            raise ModelFormatError(file, f"class_names must be {num_classes} strings (the "
                                   f"model's class count), got {str(names)[:80]}")
        if not (isinstance(label_map, list) and len(label_map) == num_classes
                and all(isinstance(i, int) and not isinstance(i, bool)
                        and -(2 ** 63) <= i < 2 ** 63 for i in label_map)):
            raise ModelFormatError(file, f"label_map must be {num_classes} int64 category ids "
                                   f"(the model's class count), got {str(label_map)[:80]}")
        return list(names), list(label_map)
    if hf_config is not None and isinstance(hf_config.get("id2label"), dict):
        id2label = hf_config["id2label"]  # int keys, str values (checked in _read_hf_config)
        names = [id2label.get(i, f"class_{i}") for i in range(num_classes)]
        return names, list(range(num_classes))
    # Official DETR trains with class index == COCO category id, so the map is identity.
    return [f"class_{i}" for i in range(num_classes)], list(range(num_classes))
