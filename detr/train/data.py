"""Datasets and the training DataLoader for ``train(config)``.

Shuffling goes through ``DistributedSampler`` even for a single process: its
order depends only on ``(seed, epoch)``, which is what makes a resumed run see
the same batches as an uninterrupted one. Augmentation draws from the torch
RNG (restored on resume); DataLoader workers get their seeds from it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from detr.train.config import TrainConfig
from detr.train.ddp import DistInfo
from runtime.errors import DataError, DetrEdgeError, InputError


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
        from detr.data.coco_schema import read_coco_json, require_objects

        require_objects(read_coco_json(ann), ann)  # before an epoch of training, not after
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
    loader = loader_forwarding_errors(dataset, collate_fn, batch_sampler=batches,
                                      num_workers=config.num_workers, persistent_workers=False,
                                      pin_memory=info.device.type == "cuda")
    return loader, sampler


def loader_forwarding_errors(dataset: Dataset, collate_fn: Callable[[list[Any]], Any] | None,
                             **options: Any) -> DataLoader:
    """``DataLoader(dataset, collate_fn=collate_fn, **options)`` in which a
    ``DetrEdgeError`` of ``dataset[i]`` (a bad image) is raised in the main process
    as itself, also from worker processes, so the CLI prints its one-line message."""
    from torch.utils.data import default_collate

    return _ErrorForwardingLoader(_CatchItemErrors(dataset),
                                  collate_fn=_CollateOrForward(collate_fn or default_collate),
                                  **options)


# A bad image raises DataError inside a DataLoader worker; torch re-raises it in the
# main process as a RuntimeError holding the worker's traceback, so the CLI could not
# print its one-line message. The three pieces below carry the error object itself
# (picklable, see InputError.__reduce__) through the loader as data and raise it
# again in the main process, with num_workers=0 and > 0 alike.
class _ItemFailed:
    """Stands in for a sample or a batch whose loading raised ``error``."""

    def __init__(self, error: DetrEdgeError) -> None:
        self.error = error


class _CatchItemErrors(Dataset):
    """``dataset[i]``, or ``_ItemFailed`` when it raises a DetrEdgeError."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DetrEdgeError as exc:
            return _ItemFailed(exc)


class _CollateOrForward:
    """The collate function, unless a sample failed: then that failure is the batch."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Any:
        failed = next((s for s in samples if isinstance(s, _ItemFailed)), None)
        return failed if failed is not None else self.collate(samples)


class _ErrorForwardingLoader(DataLoader):
    """A DataLoader that raises a forwarded sample error in the main process."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, _ItemFailed):
                raise batch.error
            yield batch
