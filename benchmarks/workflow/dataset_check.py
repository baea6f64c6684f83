"""The pipeline's first stage on a user's dataset: check it, describe its image
sizes, and derive from them the resize rule to train with and the canvas to
export at.

Checks (each failure is one ``DataError`` naming the file and the record):
both splits resolve (``runtime.dataset.resolve_dataset``: every listed image
exists, sub-folders included), both annotation files pass the schema that
training and ``eval`` use (``detr.data.coco_schema``), the splits share their
categories, and the first images of each split have the size their record
states (a wrong ``height``/``width``, often an EXIF rotation, moves every box).
A checkpoint's classes must be the dataset's categories.

Canvas: the exported graph has a fixed ``H x W`` input. Each image is resized by
the model's training rule (shorter side S, longer side <= M, aspect kept), so
the canvas that holds every image of the dataset at its training size is the
largest resized height by the largest resized width, rounded up to the backbone
stride 32. A dataset with portrait and landscape images thus gets a square-ish
canvas, a landscape-only one a landscape canvas.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detr.data.coco_schema import read_coco_json
from detr.training_resize import PAPER_MAX_SIZE, PAPER_SHORTER, from_checkpoint
from runtime.dataset import resolve_dataset
from runtime.errors import DataError
from runtime.image_io import load_image
from runtime.preprocess import BACKBONE_STRIDE, round_up_to_stride, shorter_side_size

SIZE_CHECK_IMAGES = 20  # images per split whose real size is compared with the record


@dataclass
class SplitSummary:
    name: str
    images: int
    annotations: int
    max_objects: int  # most annotations on one image
    sizes: list[tuple[int, int]] = field(repr=False)  # (h, w) of every image


@dataclass
class DatasetSummary:
    """What the checks found; ``to_dict`` is written to ``<out>/dataset.json``."""

    root: Path
    splits: list[SplitSummary]
    category_ids: list[int]  # sorted: contiguous label i <-> category_ids[i]
    category_names: list[str]

    def sizes(self) -> list[tuple[int, int]]:
        return [s for split in self.splits for s in split.sizes]

    def max_objects(self) -> int:
        return max(s.max_objects for s in self.splits)

    def to_dict(self) -> dict[str, Any]:
        sizes = self.sizes()
        common = Counter(sizes).most_common(6)
        return {"root": str(self.root),
                "splits": {s.name: {"images": s.images, "annotations": s.annotations}
                           for s in self.splits},
                "categories": dict(zip(self.category_ids, self.category_names)),
                "orientation": {"portrait": sum(h > w for h, w in sizes),
                                "landscape": sum(w > h for h, w in sizes),
                                "square": sum(w == h for h, w in sizes)},
                "distinct_sizes": len(set(sizes)),
                "most_common_sizes_hxw": [[f"{h}x{w}", n] for (h, w), n in common]}

    def describe(self) -> str:
        d = self.to_dict()
        o = d["orientation"]
        splits = ", ".join(f"{k} {v['images']} images / {v['annotations']} boxes"
                           for k, v in d["splits"].items())
        return (f"dataset {self.root}: {splits}; {len(self.category_ids)} categories "
                f"(ids {self.category_ids}); {d['distinct_sizes']} image sizes, "
                f"{o['portrait']} portrait / {o['landscape']} landscape / {o['square']} square")


def check_dataset(root: str | Path, splits: list[str],
                  label_map: list[int] | None = None) -> DatasetSummary:
    """Run the checks of the module docstring on ``splits`` of ``root``.

    ``label_map``: a checkpoint's contiguous label -> category id, which must
    equal the dataset's sorted category ids.
    """

    summaries, categories = [], None
    for name in splits:
        data = resolve_dataset(root, name)
        assert data.annotations is not None and data.image_ids is not None
        doc = read_coco_json(data.annotations)
        cats = sorted((c["id"], c["name"]) for c in doc["categories"])
        if categories is not None and cats != categories:
            raise DataError(data.annotations, f"categories differ from split {splits[0]!r}'s: "
                            f"{cats} vs {categories}")
        categories = cats
        records = {im["id"]: im for im in doc["images"]}
        sizes = []
        for k, (image_id, path) in enumerate(zip(data.image_ids, data.images)):
            rec = records[image_id]
            if k < SIZE_CHECK_IMAGES or "height" not in rec or "width" not in rec:
                image = load_image(path)  # EXIF-rotated, as training and the runtime see it
                real = (image.height, image.width)
                if "height" in rec and "width" in rec and (rec["height"], rec["width"]) != real:
                    raise DataError(data.annotations, f"image {image_id} ({rec['file_name']}) is "
                                    f"{real[1]}x{real[0]} (WxH) but its record says "
                                    f"{rec['width']}x{rec['height']}")
                sizes.append(real)
            else:
                sizes.append((int(rec["height"]), int(rec["width"])))
        per_image = Counter(a["image_id"] for a in doc["annotations"])
        summaries.append(SplitSummary(name, len(data.images), len(doc["annotations"]),
                                      max(per_image.values(), default=0), sizes))
    assert categories is not None
    ids = [c for c, _ in categories]
    if label_map is not None and list(label_map) != ids:
        raise DataError(root, f"the checkpoint's classes (category ids {list(label_map)}) are "
                        f"not the dataset's ({ids}); train on this dataset (--train-minutes) "
                        "or pass a checkpoint trained on it")
    return DatasetSummary(Path(root), summaries, ids, [n for _, n in categories])


def rule_size(h: int, w: int, shorter: int, max_size: int) -> tuple[int, int]:
    """``(h, w)`` of an ``h x w`` image under the training resize rule
    (``runtime.preprocess.shorter_side_size``, the rule training uses)."""

    return shorter_side_size(h, w, shorter, max_size)


def checkpoint_rule(raw: Any) -> tuple[int, int]:
    """``(shorter side, longer-side cap)`` a checkpoint was trained with
    (``detr.training_resize.from_checkpoint``: its record, its ``train_config``,
    else the paper's 800 / 1333)."""

    rule = from_checkpoint(raw)
    return rule.shorter, rule.max_size


def choose_canvas(sizes: list[tuple[int, int]], shorter: int,
                  max_size: int) -> tuple[int, int]:
    """``(H, W)``: the smallest stride-multiple canvas holding every image of
    ``sizes`` at its training size (module docstring)."""
    if not sizes:
        side = round_up_to_stride(max(shorter, 1))
        return side, side
    resized = [rule_size(h, w, shorter, max_size) for h, w in set(sizes)]
    H = max(h for h, _ in resized)
    W = max(w for _, w in resized)
    return round_up_to_stride(H), round_up_to_stride(W)


def canvas_fill(sizes: list[tuple[int, int]], canvas: tuple[int, int], shorter: int,
                max_size: int) -> float:
    """Mean share of the canvas the images cover (the rest is padding)."""
    areas = [h * w for h, w in (rule_size(h, w, shorter, max_size) for h, w in sizes)]
    return sum(areas) / (len(areas) * canvas[0] * canvas[1]) if areas else 0.0


def training_rule(sizes: list[tuple[int, int]], default: int) -> tuple[int, int]:
    """``(shorter, max_size)`` to train a new model on images of ``sizes``: the
    median shorter side rounded to the stride (64..800; ``default`` without
    images), the longer side capped at the paper's ratio 1333 / 800."""

    if not sizes:
        shorter = default
    else:
        short = sorted(min(h, w) for h, w in sizes)[len(sizes) // 2]
        shorter = min(800, max(64, round(short / BACKBONE_STRIDE) * BACKBONE_STRIDE))
    return shorter, math.ceil(shorter * PAPER_MAX_SIZE / PAPER_SHORTER)
