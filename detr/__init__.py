"""detr: the DETR model, loss, data and training (needs torch).

The public API is imported lazily through ``__getattr__`` so that importing
``detr.commands.*`` (the CLI) does not import torch.
"""

from __future__ import annotations

from runtime.lazy import lazy_getattr

_EXPORTS: dict[str, str] = {
    "build_model": "detr.model",
    "build_model_from_config": "detr.model",
    "DETR": "detr.model",
    "DETRConfig": "detr.config",
    "PRESETS": "detr.config",
    "get_config": "detr.config",
    "NestedTensor": "detr.nested_tensor",
    "nested_tensor_from_tensor_list": "detr.nested_tensor",
    "load_model": "detr.checkpoint",
    "load_checkpoint": "detr.checkpoint",
    "save_checkpoint": "detr.checkpoint",
    "LoadedCheckpoint": "detr.checkpoint",
    "HungarianMatcher": "detr.matcher",
    "build_criterion": "detr.criterion",
    "SetCriterion": "detr.criterion",
    "box_cxcywh_to_xyxy": "detr.box_ops",
    "box_xyxy_to_cxcywh": "detr.box_ops",
    "box_iou": "detr.box_ops",
    "box_area": "detr.box_ops",
    "generalized_box_iou": "detr.box_ops",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
