"""``detr-edge pretrain-backbone``: ResNet classifier on object crops, for DETR's backbone."""

from __future__ import annotations

import argparse

from detr.train.pretrain_config import PretrainConfig
from runtime import options as opt

# Defaults come from the config's fields: written once (detr/train/pretrain_config.py).
_DEFAULTS = PretrainConfig(data="", out="")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    parser.add_argument("--data", required=True, help="dataset root ({split}/ + annotations/)")
    parser.add_argument("--out", required=True,
                        help="torchvision ResNet state dict to write (.pth); use it with "
                        "'train --model-opt backbone_weights=OUT'")
    parser.add_argument("--backbone", default=d.backbone,
                        help="torchvision ResNet (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=d.image_size,
                        help="longer image side before cropping: DETR's training size "
                        "(default %(default)s)")
    parser.add_argument("--crop-size", type=int, default=d.crop_size,
                        help="crop side in pixels (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr,
                        help="AdamW peak lr, cosine decay (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--train-split", default=d.train_split)
    parser.add_argument("--val-split", default=d.val_split, help="'' to skip the val accuracy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        data=args.data, out=args.out, backbone=args.backbone, train_split=args.train_split,
        val_split=args.val_split or None, image_size=args.image_size, crop_size=args.crop_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    opt.check_options(
        args, image_size=opt.image_side, crop_size=opt.image_side, epochs=opt.count,
        batch_size=opt.int_range(1, 4096), lr=opt.non_negative, seed=opt.seed)

    from detr.train.pretrain_backbone import pretrain_backbone

    result = pretrain_backbone(config_from_args(args))
    val = "" if result.val_accuracy is None else f", val accuracy {result.val_accuracy:.3f}"
    print(f"backbone weights: {result.out} (train accuracy {result.train_accuracy:.3f}{val})")
    return 0
