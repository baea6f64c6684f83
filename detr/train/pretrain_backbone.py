"""Pretrain a ResNet backbone on object crops of a COCO-format dataset.

DETR starts from an ImageNet-pretrained ResNet (paper, section 4): the
transformer learns to *place* boxes on features that already tell objects
apart. Where no pretrained weights can be downloaded (this project's machines,
air-gapped sites), this module provides the same two-stage recipe from the
detection data itself: a torchvision ResNet is trained as a classifier on
crops centred on the annotated objects, and its state dict is written in
torchvision's key layout, so it plugs into DETR through
``DETRConfig.backbone_weights`` (``--model-opt backbone_weights=FILE``); the
``fc.*`` classifier keys are ignored there.

Crops are taken at the scale DETR will train at: each image is first resized
so its longer side is ``image_size`` (the DETR training resolution), then a
``crop_size`` square window is cut around the object's centre (jittered, and
flipped at random), padded with zeros where it leaves the image. Objects keep
their on-canvas size, so the features learnt are the ones DETR sees; only
objects larger than the crop get a larger window, resized down to fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from detr.train.pretrain_config import PretrainConfig
from runtime.errors import DataError, InputError
from runtime.metadata import IMAGENET_MEAN, IMAGENET_STD
from runtime.preprocess import normalize, resize_to_fit


@dataclass(frozen=True)
class PretrainResult:
    out: Path
    train_accuracy: float  # fraction of training crops classified right in the last epoch
    val_accuracy: float | None  # on centred, unflipped val crops


class ObjectCrops(torch.utils.data.Dataset):
    """``crops[i] -> (image float [3, S, S] ImageNet-normalised, label int)``.

    One item per object box of the training targets. ``train=True`` jitters the crop centre
    by up to 1/8 of the crop and flips half of the crops horizontally.
    Resized images are cached in memory (``image_size`` is small).
    """

    def __init__(self, root: str | Path, split: str, image_size: int, crop_size: int,
                 train: bool) -> None:
        from detr.data.coco import build_dataset

        self.dataset = build_dataset(root, split)
        self.image_size = image_size
        self.crop_size = crop_size
        self.train = train
        # image id, cx, cy, longer box side (original pixels), label. Boxes come from
        # the dataset's own targets: crowd regions and degenerate boxes are dropped and
        # boxes clipped to the image exactly as for DETR training.
        self.items: list[tuple[int, float, float, float, int]] = []
        for image_id in self.dataset.ids:
            info = self.dataset.coco.imgs[image_id]
            if "width" in info and "height" in info:
                width, height = int(info["width"]), int(info["height"])
            else:  # optional in COCO files: read it from the image
                width, height = self.dataset.load_image(image_id).size
            target = self.dataset.make_target(image_id, width, height)
            for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(),
                                               target["labels"].tolist(), strict=True):
                self.items.append((image_id, (x0 + x1) / 2, (y0 + y1) / 2,
                                   max(x1 - x0, y1 - y0), label))
        if not self.items:
            raise DataError(self.dataset.ann_file, "no object annotations to pretrain on")
        self._cache: dict[int, tuple[np.ndarray, float]] = {}
        self._rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        """Jitter/flip draws of the next epoch (deterministic given the seed)."""
        self._rng = np.random.default_rng(seed)

    def _resized(self, image_id: int) -> tuple[np.ndarray, float]:
        if image_id not in self._cache:
            resized, scale = resize_to_fit(self.dataset.load_image(image_id), self.image_size,
                                           self.image_size)
            self._cache[image_id] = (np.asarray(resized, dtype=np.uint8), scale)
        return self._cache[image_id]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image_id, cx, cy, side, label = self.items[index]
        pixels, scale = self._resized(image_id)
        # The window grows for objects larger than the crop (then is resized down), so
        # every crop shows the whole shape with a margin.
        s = max(self.crop_size, math.ceil(1.2 * side * scale))
        cx, cy = cx * scale, cy * scale
        if self.train:
            cx += self._rng.uniform(-s / 8, s / 8)
            cy += self._rng.uniform(-s / 8, s / 8)
        x0, y0 = round(cx - s / 2), round(cy - s / 2)
        crop = np.zeros((s, s, 3), dtype=np.uint8)
        h, w = pixels.shape[:2]
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + s, w), min(y0 + s, h)
        if sx1 > sx0 and sy1 > sy0:
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
        if s != self.crop_size:
            crop = np.asarray(Image.fromarray(crop).resize((self.crop_size, self.crop_size),
                                                           Image.Resampling.BILINEAR))
        if self.train and self._rng.random() < 0.5:
            crop = crop[:, ::-1]
        return torch.from_numpy(normalize(crop, IMAGENET_MEAN, IMAGENET_STD)), label


def build_classifier(backbone: str, num_classes: int) -> torch.nn.Module:
    """torchvision ResNet with ordinary BatchNorm and a ``num_classes`` fc head."""
    import torchvision

    from detr.config import BACKBONES

    if backbone not in BACKBONES:
        raise InputError("--backbone", f"must be one of {BACKBONES}, got {backbone!r}")
    model: torch.nn.Module = getattr(torchvision.models, backbone)(weights=None,
                                                                   num_classes=num_classes)
    return model


def _accuracy(model: torch.nn.Module, crops: ObjectCrops, batch_size: int) -> float:
    loader = torch.utils.data.DataLoader(crops, batch_size=batch_size, shuffle=False)
    model.eval()
    right = total = 0
    with torch.no_grad():
        for images, labels in loader:
            right += int((model(images).argmax(-1) == labels).sum())
            total += len(labels)
    return right / max(total, 1)


def pretrain_backbone(config: PretrainConfig) -> PretrainResult:
    """Train the classifier, write its state dict atomically to ``config.out``.

    AdamW with cosine decay over all steps (a short schedule with no
    hand-tuned drop epoch). The file holds plain tensors only, so
    ``torch.load(weights_only=True)`` (how DETR loads it) reads it.
    """
    from tqdm import tqdm

    from runtime.atomic import atomic_write

    config.validate()
    torch.manual_seed(config.seed)
    train_crops = ObjectCrops(config.data, config.train_split, config.image_size,
                              config.crop_size, train=True)
    val_crops = (ObjectCrops(config.data, config.val_split, config.image_size,
                             config.crop_size, train=False) if config.val_split else None)
    num_classes = train_crops.dataset.num_classes
    model = build_classifier(config.backbone, num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_crops) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    generator = torch.Generator().manual_seed(config.seed)
    train_accuracy = 0.0
    val_accuracy: float | None = None
    for epoch in range(config.epochs):
        train_crops.reseed(config.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(train_crops, batch_size=config.batch_size,
                                             shuffle=True, generator=generator, drop_last=False)
        model.train()
        right = total = 0
        bar: Any = tqdm(loader, desc=f"pretrain {config.backbone} epoch {epoch}",
                        disable=not config.progress, dynamic_ncols=True)
        for images, labels in bar:
            logits = model(images)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise DataError(config.data, f"non-finite loss {loss.item()} while pretraining")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            right += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{right / total:.3f}")
        train_accuracy = right / max(total, 1)
        if val_crops is not None:
            val_accuracy = _accuracy(model, val_crops, config.batch_size)
        if config.progress:
            val_text = "" if val_accuracy is None else f", val accuracy {val_accuracy:.3f}"
            print(f"epoch {epoch}: train accuracy {train_accuracy:.3f}{val_text}")
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with atomic_write(out) as handle:
        torch.save(state, handle)
    return PretrainResult(out=out, train_accuracy=train_accuracy, val_accuracy=val_accuracy)
