"""The DETR paper's data augmentation, on ``(PIL image, target)`` pairs.

Before :class:`Normalize`, ``target['boxes']`` is float ``[N, 4]`` ABSOLUTE
pixel ``xyxy``; :class:`Normalize` converts them to NORMALISED ``cxcywh``
(relative to the image size at that point), the format the set loss expects.
Other target keys kept consistent: ``labels`` [N], ``area`` [N], ``iscrowd``
[N], optional ``masks`` bool [N, H, W], ``size`` int64 [2] (h, w).

Training recipe (paper, section A.4): random horizontal flip; then with p=0.5
either a multi-scale resize (shorter side 480..800 step 32, longer <= 1333) or
resize to 400/500/600, random crop of 384..600 px, then the multi-scale resize.
Every random draw uses torch's global RNG (``torch.rand``/``torch.randint``),
so ``torch.manual_seed`` makes runs reproducible (DataLoader workers get
distinct torch seeds automatically).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from detr.box_ops import box_xyxy_to_cxcywh
from runtime.errors import InputError
from runtime.metadata import IMAGENET_MEAN, IMAGENET_STD
from runtime.preprocess import shorter_side_size

Target = dict[str, Any]
# Paper defaults.
DEFAULT_SCALES = tuple(range(480, 801, 32))  # shorter side choices for multi-scale training
DEFAULT_MAX_SIZE = 1333  # longer side never exceeds this
DEFAULT_CROP_SIZES = (400, 500, 600)  # resize before the random crop
DEFAULT_CROP_RANGE = (384, 600)  # side range of the random crop
_PER_BOX_KEYS = ("boxes", "labels", "area", "iscrowd", "masks")


def _select(target: Target, keep: Tensor) -> None:
    for key in _PER_BOX_KEYS:
        if key in target:
            target[key] = target[key][keep]


def crop(image: Image.Image, target: Target, top: int, left: int, height: int, width: int
         ) -> tuple[Image.Image, Target]:
    """Crop the region ``[top, top+height) x [left, left+width)``; boxes are shifted,
    clipped to the crop, their area recomputed, and boxes left empty are removed."""
    image = image.crop((left, top, left + width, top + height))
    target = dict(target)
    target["size"] = torch.tensor([height, width], dtype=torch.int64)
    if "boxes" in target:
        boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        boxes = boxes.reshape(-1, 2, 2)  # [N, (x0y0, x1y1), (x, y)]
        boxes = torch.min(boxes, torch.tensor([width, height], dtype=torch.float32)).clamp(min=0)
        target["area"] = (boxes[:, 1, :] - boxes[:, 0, :]).prod(dim=1)
        target["boxes"] = boxes.reshape(-1, 4)
        keep = torch.all(boxes[:, 1, :] > boxes[:, 0, :], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"][:, top:top + height, left:left + width]
        if "boxes" not in target:
            keep = target["masks"].flatten(1).any(dim=1)
    if "boxes" in target or "masks" in target:
        _select(target, keep)
    return image, target


def hflip(image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
    """Mirror left-right; box ``x0, x1`` become ``w - x1, w - x0``."""
    w = image.width
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    target = dict(target)
    if "boxes" in target:
        b = target["boxes"]
        target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def resize(image: Image.Image, target: Target | None, size: int | tuple[int, int],
           max_size: int | None = None) -> tuple[Image.Image, Target | None]:
    """Resize so the shorter side is ``size`` (int; longer side capped at ``max_size``)
    or to exactly ``(h, w)``; boxes and areas are scaled with the image."""
    if isinstance(size, int):
        # The rule lives in runtime.preprocess so evaluation and deployment resize alike.
        new_h, new_w = shorter_side_size(image.height, image.width, size, max_size)
    else:
        new_h, new_w = size
    new_h, new_w = max(new_h, 1), max(new_w, 1)
    ratio_w, ratio_h = new_w / image.width, new_h / image.height
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if target is None:
        return image, None
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor(
            [ratio_w, ratio_h, ratio_w, ratio_h], dtype=torch.float32)
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([new_h, new_w], dtype=torch.int64)
    if "masks" in target and target["masks"].shape[0] > 0:
        masks = target["masks"][:, None].float()
        target["masks"] = torch.nn.functional.interpolate(masks, size=(new_h, new_w))[:, 0] > 0.5
    elif "masks" in target:
        target["masks"] = torch.zeros((0, new_h, new_w), dtype=torch.bool)
    return image, target


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[..., Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p  # probability of flipping

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        if float(torch.rand(1)) < self.p:
            return hflip(image, target)
        return image, target


class RandomResize:
    """Shorter side drawn uniformly from ``sizes``; longer side <= ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes or any(int(s) < 1 for s in sizes):
            raise InputError("scales", f"need at least one positive size, got {list(sizes)}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        size = self.sizes[int(torch.randint(len(self.sizes), (1,)))]
        out_image, out_target = resize(image, target, size, self.max_size)
        assert out_target is not None
        return out_image, out_target


class RandomSizeCrop:
    """Crop a random ``w x h`` region, each side drawn from ``[min_size, max_size]``
    (capped at the image side, so an image smaller than ``min_size`` is kept whole)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
        w_hi, h_hi = min(image.width, self.max_size), min(image.height, self.max_size)
        w = int(torch.randint(min(self.min_size, w_hi), w_hi + 1, (1,)))
        h = int(torch.randint(min(self.min_size, h_hi), h_hi + 1, (1,)))
        top = int(torch.randint(0, image.height - h + 1, (1,)))
        left = int(torch.randint(0, image.width - w + 1, (1,)))
        return crop(image, target, top, left, h, w)


class RandomSelect:
    """With probability ``p`` apply ``transforms1``, else ``transforms2``."""

    def __init__(self, transforms1: Callable[..., Any], transforms2: Callable[..., Any],
                 p: float = 0.5) -> None:
        self.transforms1 = transforms1
        self.transforms2 = transforms2
        self.p = p

    def __call__(self, image: Any, target: Target) -> tuple[Any, Target]:
        if float(torch.rand(1)) < self.p:
            return self.transforms1(image, target)
        return self.transforms2(image, target)


class ToTensor:
    """PIL RGB -> float ``[3, H, W]`` in [0, 1]."""

    def __call__(self, image: Image.Image, target: Target) -> tuple[Tensor, Target]:
        return TF.to_tensor(image), target


class Normalize:
    """Subtract ``mean``, divide by ``std`` (ImageNet by default, what the backbone
    expects) and turn ``boxes`` from absolute xyxy into normalised cxcywh."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        image = TF.normalize(image, mean=self.mean, std=self.std)
        target = dict(target)
        if "boxes" in target:
            h, w = image.shape[-2:]
            # Divide by this image's size (before batch padding): boxes are relative
            # to the valid region, as the set loss and the mask-aware export expect.
            cxcywh = box_xyxy_to_cxcywh(target["boxes"])
            target["boxes"] = cxcywh / torch.tensor([w, h, w, h], dtype=torch.float32)
        return image, target


def make_coco_transforms(split: str, scales: Sequence[int] = DEFAULT_SCALES,
                         max_size: int = DEFAULT_MAX_SIZE,
                         crop_sizes: Sequence[int] = DEFAULT_CROP_SIZES,
                         crop_range: tuple[int, int] = DEFAULT_CROP_RANGE) -> Compose:
    """The paper's train / eval pipelines, ending with ToTensor + Normalize.

    ``split``: "train" (augmentation) or "val"/"test" (resize the shorter side to
    ``max(scales)`` only). Small models train at small resolutions by passing e.g.
    ``scales=range(160, 257, 32), max_size=400, crop_sizes=(160, 200, 240),
    crop_range=(128, 240)``.
    """
    normalize = Compose([ToTensor(), Normalize()])
    if split == "train":
        return Compose([
            RandomHorizontalFlip(),
            RandomSelect(
                RandomResize(scales, max_size=max_size),
                Compose([RandomResize(crop_sizes), RandomSizeCrop(*crop_range),
                         RandomResize(scales, max_size=max_size)]),
            ),
            normalize,
        ])
    if split in ("val", "test"):
        return Compose([RandomResize([max(scales)], max_size=max_size), normalize])
    raise InputError("split", f"unknown split {split!r} (expected 'train', 'val' or 'test')")
