"""Calibration / held-out image selection and batching for INT8.

Every batch goes through ``runtime.preprocess`` (the runtime's own
preprocessing), so the ranges measured at calibration are those of the pixels
the deployed model sees. Selection is a seeded permutation of the sorted file
list: the same directory and seed give the same images in the same order on any
machine (no dependence on filesystem listing order).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.dataset import resolve_dataset
from runtime.errors import InputError
from runtime.metadata import ModelMeta
from runtime.preprocess import preprocess


@dataclass(frozen=True)
class ImageSplit:
    """Disjoint calibration and held-out (evaluation) image lists."""

    calib: list[Path]  # images whose activations set the INT8 scales
    held_out: list[Path]  # images used only to measure sensitivity / AP (never calibrated on)


def list_images(data_dir: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """Calibration images of ``data_dir``, at most ``limit``.

    A dataset root gives its train split (``runtime.dataset.resolve_dataset``:
    the annotation file's images, sub-folders included), a split folder that
    split, a plain folder every image under it (recursive, sorted by path)."""
    paths = resolve_dataset(data_dir, default_split="train").images
    return paths[:limit] if limit else paths


def select_images(paths: Sequence[Path], count: int, seed: int = 0) -> list[Path]:
    """``count`` images of ``paths`` chosen by a seeded permutation (all if fewer)."""
    if count <= 0:
        raise InputError("--calib-images", f"must be positive, got {count}")
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in order[:count]]


def split_images(paths: Sequence[Path], num_calib: int, num_held_out: int,
                 seed: int = 0) -> ImageSplit:
    """Seeded disjoint split: the first ``num_held_out`` of the permutation are
    held out, the next ``num_calib`` calibrate. Held-out images come first so
    that asking for more calibration images never changes the evaluation set."""
    if num_calib <= 0:
        raise InputError("--calib-images", f"must be positive, got {num_calib}")
    if num_held_out < 0:
        raise InputError("--eval-images", f"must be >= 0, got {num_held_out}")
    if num_held_out >= len(paths):
        raise InputError("--eval-images", f"{num_held_out} held-out images leave none of the "
                         f"{len(paths)} images for calibration")
    order = np.random.default_rng(seed).permutation(len(paths))
    held = [paths[i] for i in order[:num_held_out]]
    calib = [paths[i] for i in order[num_held_out:num_held_out + num_calib]]
    return ImageSplit(calib=calib, held_out=held)


def iter_feeds(paths: Sequence[Path], meta: ModelMeta,
               batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """ONNX feeds ``{'images': float32 [B,3,H,W] (+ 'mask': bool [B,H,W])}`` of the
    images at ``paths``, made by ``runtime.preprocess`` (the runtime's own
    preprocessing): calibration, overflow scans, timing inputs.

    ``B = batch_size`` except a smaller last batch. The mask (True = padding)
    is included only when the model has a mask input (``meta.with_mask``).
    """
    if batch_size <= 0:
        raise InputError("batch_size", f"must be positive, got {batch_size}")
    for start in range(0, len(paths), batch_size):
        batch = preprocess(list(paths[start:start + batch_size]), meta)
        feed = {"images": np.ascontiguousarray(batch.images, dtype=np.float32)}
        if meta.with_mask:
            feed["mask"] = np.ascontiguousarray(batch.mask, dtype=bool)
        yield feed


def fixed_size_batches(paths: Sequence[Path], meta: ModelMeta,
                       batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feeds as :func:`iter_feeds`, all of exactly ``batch_size`` images, for a
    TensorRT calibrator (which needs every batch the same size): a short last
    batch is dropped (calibration statistics do not need every image)."""
    for feed in iter_feeds(paths, meta, batch_size):
        if feed["images"].shape[0] == batch_size:
            yield feed


@dataclass(frozen=True)
class QuantImages:
    """Where ``quantize`` calibrates and where it decides."""

    calib: list[Path]  # calibration images (train split when there is one)
    held_out: list[Path]  # images that decide the AP budget, never calibrated on
    annotations: Path | None  # COCO annotations of ``held_out``; None = pseudo ground truth
    image_ids: list[int] | None  # COCO id of each held-out image (None: match by file name)
    calib_from: str  # for the report, e.g. "train of data/shapes (2000 images, annotated)"
    eval_from: str


def quant_images(data: str | os.PathLike[str], num_calib: int, num_eval: int,
                 seed: int = 0, eval_ann: str | None = None,
                 eval_data: str | os.PathLike[str] | None = None,
                 calib: Sequence[Path] | None = None) -> QuantImages:
    """Calibration and held-out images for ``data``: a dataset root or a split
    folder (``runtime.dataset.resolve_dataset``), or a plain image folder.

    Held-out images come from ``eval_data`` when given (a dataset root gives its
    val split), else from the ``val`` split of ``data``'s dataset when it has one
    other than the calibration split: ``num_calib`` train images calibrate and
    ``num_eval`` val images decide, with val's annotations. Otherwise the images
    of the one split or folder are split (seeded, disjoint); held-out images keep
    the split's annotations, or ``eval_ann``, or none (pseudo ground truth).
    ``calib`` overrides the calibration images (an explicit list).
    """
    source = resolve_dataset(data, default_split="train")
    calib_paths = list(calib) if calib is not None else source.images
    calib_from = f"{len(calib_paths)} given images" if calib is not None else source.describe()
    val = None
    if eval_data is not None:
        val = resolve_dataset(eval_data, default_split="val")
    elif source.split is not None:
        try:
            val = resolve_dataset(source.root, "val")
        except InputError:  # no val split: decide on held-out train images
            val = None
        if val is not None and val.split == source.split:
            val = None
    if val is not None and num_eval > 0:
        order = np.random.default_rng(seed).permutation(len(val.images))[:num_eval]
        ids = [val.image_ids[i] for i in order] if val.image_ids else None
        ann = Path(eval_ann) if eval_ann else val.annotations
        return QuantImages(select_images(calib_paths, num_calib, seed),
                           [val.images[i] for i in order], ann, None if eval_ann else ids,
                           calib_from, val.describe())
    # One image set: hold out at most half of it (the rest calibrates).
    split = split_images(calib_paths, num_calib, min(num_eval, len(calib_paths) // 2), seed)
    ids = None
    if source.image_ids is not None and calib is None:
        by_path = dict(zip(source.images, source.image_ids))
        ids = [by_path[p] for p in split.held_out]
    annotations = source.annotations if calib is None else None
    if eval_ann:
        annotations, ids = Path(eval_ann), None
    return QuantImages(split.calib, split.held_out, annotations, ids, calib_from, calib_from)
