"""Datasets and the training DataLoader for ``train(config)``.

Shuffling goes through ``DistributedSampler`` even for a single process: its
order depends only on ``(seed, epoch)``, which is what makes a resumed run see
the same batches as an uninterrupted one. Augmentation draws from the torch
RNG (restored on resume); DataLoader workers get their seeds from it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from detr.train.config import TrainConfig
from detr.train.ddp import DistInfo
from runtime.errors import DataError, InputError


def load_train_val(config: TrainConfig) -> tuple[Any, Path]:
    """Open the training split (with the paper's augmentation at the configured
    sizes) and check the val split exists when it will be evaluated.

    Returns ``(train dataset, dataset root)``; the dataset has ``label_map`` and
    ``class_names``.
    """
    from detr.data import build_dataset

    root = Path(config.data)
    if not root.is_dir():
        raise InputError("--data", f"{root} is not a directory")
    transforms = train_transforms(config)
    train_set = build_dataset(root, config.train_split, transforms)
    if config.eval_every:
        ann = root / "annotations" / f"instances_{config.val_split}.json"
        if not ann.is_file():
            raise DataError(ann, f"not found: split {config.val_split!r} is evaluated every "
                            f"{config.eval_every} epoch(s) (use --eval-every 0 to skip)")
    return train_set, root


def train_transforms(config: TrainConfig) -> Any:
    """The paper's training augmentation (flip, random resize, random-crop branch)
    at the configured sizes; ``crop=False`` keeps flip + resize only.

    With custom ``scales`` and no explicit crop sizes, the crop branch is scaled
    like the paper's (crop resize 400/500/600 and crop 384..600 for scales up to 800).
    """
    from detr.data import make_coco_transforms
    from detr.data import transforms as T

    scales = list(config.scales) if config.scales else list(T.DEFAULT_SCALES)
    max_size = config.max_size if config.max_size is not None else T.DEFAULT_MAX_SIZE
    if not config.crop:
        return T.Compose([T.RandomHorizontalFlip(), T.RandomResize(scales, max_size=max_size),
                          T.ToTensor(), T.Normalize()])
    if config.scales is None:
        return make_coco_transforms("train", scales=scales, max_size=max_size)
    top = max(scales)
    crop_sizes = [round(top * f) for f in (0.5, 0.625, 0.75)]  # paper: 400/500/600 of 800
    crop_range = (round(top * 0.48), round(top * 0.75))  # paper: 384..600 of 800
    return make_coco_transforms("train", scales=scales, max_size=max_size,
                                crop_sizes=crop_sizes, crop_range=crop_range)


def build_train_loader(dataset: Dataset, config: TrainConfig, info: DistInfo
                       ) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled batches of ``(NestedTensor, targets)``; the last partial batch is
    dropped (official DETR) so every step has ``batch_size`` images per process."""
    from detr.data import collate_fn

    n = len(dataset)  # type: ignore[arg-type]
    if n < config.batch_size * info.world_size:
        raise DataError(config.data, f"split {config.train_split!r} has {n} images, fewer than "
                        f"one batch ({config.batch_size} x {info.world_size} processes)")
    sampler: DistributedSampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    batches = BatchSampler(sampler, config.batch_size, drop_last=True)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn,
                        num_workers=config.num_workers,
                        persistent_workers=False, pin_memory=info.device.type == "cuda")
    return loader, sampler
