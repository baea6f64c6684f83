"""Options of ``detr-edge pretrain-backbone`` (:func:`detr.train.pretrain_backbone.pretrain_backbone`).

Torch-free: the CLI module ``detr.commands.pretrain_backbone`` takes its flag
defaults from these fields, so each default is written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import InputError


@dataclass(frozen=True)
class PretrainConfig:
    """Options of :func:`pretrain_backbone` (built once by the CLI)."""

    data: str  # dataset root: {split}/ images + annotations/instances_{split}.json
    out: str  # output: torchvision ResNet state dict (.pth)
    backbone: str = "resnet18"  # torchvision ResNet name
    train_split: str = "train"
    val_split: str | None = "val"  # accuracy reported per epoch; None = skip
    image_size: int = 128  # longer image side before cropping (= DETR training size)
    crop_size: int = 64  # side of the square crop around each object
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1:
            raise InputError("--epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError("--batch-size", f"must be >= 1, got {self.batch_size}")
        if not 16 <= self.crop_size <= self.image_size:
            raise InputError("--crop-size", f"must be in 16..image_size ({self.image_size}), "
                             f"got {self.crop_size}")
