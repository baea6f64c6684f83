"""Datasets for detr-edge: synthetic 'shapes' generator, COCO reader, the
paper's transforms and the batch collate function.

Attributes are imported lazily (module ``__getattr__``) so importing
``detr.data.synthetic`` does not pull in torch.
"""

from __future__ import annotations

from runtime.lazy import lazy_getattr

_EXPORTS = {
    "ShapesConfig": "detr.data.synthetic",
    "make_shapes_dataset": "detr.data.synthetic",
    "CocoDetection": "detr.data.coco",
    "build_dataset": "detr.data.coco",
    "make_coco_transforms": "detr.data.transforms",
    "collate_fn": "detr.data.collate",
}

__all__ = ["CocoDetection", "ShapesConfig", "build_dataset", "collate_fn",
           "make_coco_transforms", "make_shapes_dataset"]

__getattr__ = lazy_getattr(__name__, _EXPORTS)
