"""COCO-format detection dataset for DETR training and evaluation.

The annotation file is validated first (:mod:`detr.data.coco_schema`), then
indexed by pycocotools (``dataset.coco`` is the ``COCO`` object the evaluator
uses). Category ids may be arbitrary and non-contiguous; the model sees
contiguous labels ``0..K-1`` in sorted category-id order and
``dataset.label_map[label]`` gives the category id back.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from detr.data.coco_schema import is_finite_number, read_coco_json, rle_string_counts
from runtime.errors import DataError
from runtime.image_io import load_image

Target = dict[str, Any]
Transforms = Callable[[Image.Image, Target], tuple[Any, Target]]


class CocoDetection(torch.utils.data.Dataset):
    """``dataset[i] -> (image, target)``.

    With ``transforms`` (e.g. ``make_coco_transforms``) the image is float
    ``[3, H, W]`` ImageNet-normalised and ``target['boxes']`` is float ``[N, 4]``
    normalised ``cxcywh``. Without transforms the image is the RGB PIL image
    and ``boxes`` are absolute pixel ``xyxy`` clipped to the image.

    target: ``boxes``; ``labels`` int64 [N] contiguous; ``image_id`` int64 [1];
    ``area`` float [N]; ``iscrowd`` int64 [N] (all 0: crowd regions are dropped,
    as DETR does not train on them); ``orig_size`` and ``size`` int64 [2] (h, w);
    ``masks`` bool [N, H, W] when ``return_masks``.
    Degenerate boxes (zero width or height after clipping) are dropped; images
    without objects are kept (N = 0).
    """

    def __init__(self, img_folder: str | Path, ann_file: str | Path,
                 transforms: Transforms | None = None, return_masks: bool = False) -> None:
        from pycocotools.coco import COCO

        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        if not self.img_folder.is_dir():
            raise DataError(self.img_folder, "image folder not found")
        doc = read_coco_json(self.ann_file)
        self.coco = COCO()
        self.coco.dataset = doc
        # pycocotools prints "creating index..." to stdout; keep the CLI output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self.ids: list[int] = sorted(self.coco.imgs)
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        self.label_map: list[int] = [c["id"] for c in cats]  # contiguous label -> category id
        self.class_names: list[str] = [c["name"] for c in cats]
        self.cat_to_label = {cid: i for i, cid in enumerate(self.label_map)}
        self.transforms = transforms
        self.return_masks = return_masks

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (the model adds one no-object class)."""
        return len(self.label_map)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        """RGB PIL image of ``image_id``; ``DataError`` names the image record on failure."""
        info = self.coco.imgs[image_id]
        path = self.img_folder / info["file_name"]
        try:
            return load_image(path)
        except DataError as exc:
            raise DataError(self.ann_file, f"image {image_id} ({info['file_name']}): "
                            f"{exc.problem} [{path}]") from exc

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image_id = self.ids[index]
        image = self.load_image(image_id)
        target = self.make_target(image_id, image.width, image.height)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def make_target(self, image_id: int, width: int, height: int) -> Target:
        """Target with absolute pixel xyxy boxes for an image of ``width x height``."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, [])
                if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)  # [N, 4] xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns],
                              dtype=torch.int64)
        area = torch.tensor([float(a["area"]) if "area" in a else a["bbox"][2] * a["bbox"][3]
                             for a in anns], dtype=torch.float32)
        target: Target = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "area": area[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "size": torch.tensor([height, width], dtype=torch.int64),
        }
        if self.return_masks:
            kept = [a for a, k in zip(anns, keep.tolist()) if k]
            target["masks"] = self._masks(kept, width, height)
        return target

    def _masks(self, anns: list[dict[str, Any]], width: int, height: int) -> torch.Tensor:
        """bool [N, H, W] from polygon/RLE segmentations (the bbox rectangle if none)."""
        from pycocotools import mask as coco_mask

        masks = np.zeros((len(anns), height, width), dtype=bool)
        for i, a in enumerate(anns):
            seg = a.get("segmentation")
            if seg:
                seg = self._checked_segmentation(a["id"], seg, width, height)
                try:
                    if isinstance(seg, dict) and isinstance(seg["counts"], str):
                        # Compressed RLE goes straight to decode (frPyObjects would
                        # read it as uncompressed run lengths).
                        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
                        m = coco_mask.decode(rle)
                    else:
                        m = coco_mask.decode(coco_mask.frPyObjects(seg, height, width))
                except Exception as exc:  # pycocotools raises bare Exception on bad input
                    raise DataError(self.ann_file, f"annotation {a['id']} has an unreadable "
                                    f"segmentation ({exc})") from exc
                masks[i] = (m.any(axis=2) if m.ndim == 3 else m).astype(bool)
            else:
                x, y, w, h = a["bbox"]
                masks[i, int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = True
        return torch.from_numpy(masks)

    def _checked_segmentation(self, ann_id: int, seg: Any, width: int, height: int) -> Any:
        """Polygons with vertices clamped to the image, or an RLE of the image's size.

        Clamping matters: pycocotools rasterises a polygon over its whole extent,
        so one vertex at 1e9 makes it allocate until the machine runs out of
        memory. Clamping a vertex changes the mask only outside the image (for
        COCO's in-image polygons, not at all)."""
        def bad(why: str) -> DataError:
            return DataError(self.ann_file, f"annotation {ann_id} has a bad segmentation: {why}")

        if isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if size != [height, width]:
                raise bad(f"RLE size {size!r:.40} is not the image size [{height}, {width}]")
            if isinstance(counts, str):
                runs = rle_string_counts(counts)
                if runs is None:
                    raise bad("RLE counts string is malformed")
            elif isinstance(counts, list):
                runs = counts
            else:
                raise bad("RLE needs 'counts' as a list of integers or a string")
            if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2 ** 31
                       for c in runs):
                raise bad("RLE counts must be non-negative integers")
            # Exactly h*w: more writes past pycocotools' buffer, fewer leaves pixels
            # of its (uninitialised) output buffer unset.
            if sum(runs) != height * width:
                raise bad(f"RLE counts add up to {sum(runs)} pixels, the image has "
                          f"{height * width}")
            return seg
        polygons = []
        for poly in seg:
            if (not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2
                    or not all(is_finite_number(v) for v in poly)):
                raise bad("polygons must be lists of >= 3 finite (x, y) pairs")
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            xy[:, 0] = xy[:, 0].clip(0, width)
            xy[:, 1] = xy[:, 1].clip(0, height)
            polygons.append(xy.ravel().tolist())
        return polygons


def build_dataset(root: str | Path, split: str, transforms: Transforms | None = None,
                  return_masks: bool = False) -> CocoDetection:
    """Dataset for the layout ``root/{split}/`` + ``root/annotations/instances_{split}.json``
    (what ``detr-edge make-dataset`` writes, and COCO 2017 with split ``train2017``).
    ``root`` may also be that split's folder (``runtime.dataset.locate_split``)."""
    from runtime.dataset import annotated_split

    if not Path(root).is_dir():
        raise DataError(root, "dataset folder not found")
    img_folder, ann_file = annotated_split(root, split)
    return CocoDetection(img_folder, ann_file, transforms=transforms, return_masks=return_masks)
