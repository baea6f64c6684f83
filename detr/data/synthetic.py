"""Deterministic synthetic COCO-format 'shapes' detection dataset.

Layout written by :func:`make_shapes_dataset`::

    out_dir/train/000001.jpg ...      out_dir/val/000001.jpg ...
    out_dir/annotations/instances_train.json, instances_val.json

Content: 1..max_objects textured shapes (circle, square, triangle, star,
ellipse, cross) with random colours and textures (solid, stripes, checkers,
noise) on cluttered backgrounds (gradients, soft blobs, lines and arcs that are
not objects). Sizes are drawn from three bands so COCO's small (< 32^2 px),
medium and large (> 96^2 px) ranges all hold objects and AP_S/AP_M/AP_L mean
something. Category ids are NON-contiguous (2, 5, 7, 11, 13, 17) on purpose, so
every consumer must go through the label map.

Occlusion: shapes are pasted in order, later ones covering earlier ones. The
annotation is the VISIBLE extent: ``bbox`` is the tight box around the visible
pixels and ``area`` their count (as COCO does with its visible-mask areas). A
new shape whose placement would leave an earlier one less than 30% visible is
re-placed (a few tries) or skipped, so no object in the image is hidden beyond
70% and no drawn object is left unannotated.

The "hard" variant (:data:`HARD_DEFAULTS`, ``make-dataset shapes-hard``) keeps
the drawing and changes what a user's own data changes: non-square images of
several sizes (portrait and landscape), files spread over nested sub-folders
(``file_name`` holds the relative path), names with spaces and odd characters,
a share of grayscale PNGs among RGB JPEGs, and 5 classes with non-contiguous ids.

Determinism: image ``i`` of split ``s`` uses ``numpy.random.default_rng([seed,
s, i])`` (its file name, folder and colour mode ``[seed, s, i, 1]``), images are JPEG at a fixed quality (or PNG), JSON is written with a
fixed key order: two runs with the same config give identical bytes (with the
same Pillow/libjpeg build).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detr.data.shapes_draw import (
    SHAPE_NAMES,
    TEXTURES,
    background,
    random_colour,
    shape_mask,
    texture,
)
from runtime.atomic import atomic_write_text
from runtime.errors import InputError

# Default categories: (COCO category id, shape name). Ids are primes on purpose.
DEFAULT_CATEGORIES: tuple[tuple[int, str], ...] = (
    (2, "circle"), (5, "square"), (7, "triangle"), (11, "star"), (13, "ellipse"), (17, "cross"),
)
_SPLIT_IDS = {"train": 0, "val": 1}
_MIN_VISIBLE = 0.3  # an earlier shape must keep >= 30% of its pixels visible
_PLACEMENT_TRIES = 6  # re-placements of a shape before it is skipped


@dataclass(frozen=True)
class ShapesConfig:
    """How to generate the shapes dataset."""

    seed: int = 0  # same seed -> byte-identical dataset
    num_train: int = 1000  # training images
    num_val: int = 200  # validation images
    image_size: int = 320  # side of the square images (pixels)
    variable_size: tuple[int, int] | None = None  # (min, max) side: random WxH per image instead
    max_objects: int = 20  # objects per image are drawn uniformly from 1..max_objects
    categories: tuple[tuple[int, str], ...] = DEFAULT_CATEGORIES  # (category id, shape name)
    image_format: str = "jpg"  # "jpg" (fixed quality) or "png" (lossless, larger)
    jpeg_quality: int = 90  # fixed so the bytes are reproducible
    # Probabilities of the small / medium / large size bands for each object.
    size_band_probs: tuple[float, float, float] = field(default=(0.35, 0.45, 0.2))
    max_large: int = 2  # at most this many large shapes per image, so they do not cover all
    # (height, width) choices, one drawn per image; overrides image_size/variable_size.
    sizes: tuple[tuple[int, int], ...] | None = None
    gray_fraction: float = 0.0  # share of images written as single-channel grayscale PNGs
    subfolders: int = 0  # spread images over this many (nested) sub-folders; 0 = flat
    odd_names: bool = False  # file names with spaces, '#', '&', quotes, brackets, non-ASCII

    def validate(self) -> None:
        """Raise ``InputError`` naming the bad option."""
        if self.num_train < 0 or self.num_val < 0:
            raise InputError("num_train/num_val", "must be >= 0")
        if self.image_size < 32:
            raise InputError("image_size", f"must be >= 32 pixels, got {self.image_size}")
        if self.variable_size is not None:
            lo, hi = self.variable_size
            if lo < 32 or hi < lo:
                raise InputError("variable_size", f"need 32 <= min <= max, got {self.variable_size}")
        if not 1 <= self.max_objects <= 100:
            raise InputError("max_objects", f"must be in 1..100, got {self.max_objects}")
        if not self.categories:
            raise InputError("categories", "need at least one category")
        ids = [c for c, _ in self.categories]
        if len(set(ids)) != len(ids) or any(c < 1 for c in ids):
            raise InputError("categories", f"category ids must be unique and >= 1, got {ids}")
        for _, name in self.categories:
            if name not in SHAPE_NAMES:
                raise InputError("categories", f"unknown shape {name!r}; known: {SHAPE_NAMES}")
        if self.image_format not in ("jpg", "png"):
            raise InputError("image_format", f"must be 'jpg' or 'png', got {self.image_format!r}")
        probs = self.size_band_probs
        if len(probs) != 3 or min(probs) < 0 or sum(probs) <= 0:
            raise InputError("size_band_probs", f"need 3 non-negative numbers, got {probs}")
        if self.max_large < 0:
            raise InputError("max_large", f"must be >= 0, got {self.max_large}")
        if self.sizes is not None and (not self.sizes or any(
                len(hw) != 2 or min(hw) < 32 for hw in self.sizes)):
            raise InputError("sizes", f"need (height, width) pairs >= 32 pixels, got {self.sizes}")
        if not 0.0 <= self.gray_fraction <= 1.0:
            raise InputError("gray_fraction", f"must be in [0, 1], got {self.gray_fraction}")
        if self.subfolders < 0:
            raise InputError("subfolders", f"must be >= 0, got {self.subfolders}")


# What ``make-dataset shapes-hard`` changes from ShapesConfig's defaults: a user's
# own dataset as issue 16 met it. Sizes are (height, width), three landscape and
# three portrait, so batches mix orientations and training pads them.
HARD_DEFAULTS: dict[str, Any] = {
    "categories": ((3, "circle"), (8, "square"), (21, "triangle"), (34, "star"), (55, "cross")),
    "sizes": ((120, 160), (160, 120), (96, 176), (176, 96), (144, 192), (192, 144)),
    "gray_fraction": 0.3,
    "subfolders": 4,
    "odd_names": True,
    "max_objects": 4,
    "size_band_probs": (0.0, 0.6, 0.4),
    "max_large": 1,
}
# File-name patterns of the hard variant ({i}: image id, {e}: extension).
_ODD_NAMES = ("IMG {i:05d} - copy (2).{e}", "scan #{i} Ölmühle.{e}",
              "photo_{i}&v=1 'final'.{e}", "{i:05d}[a]{{b}},c;d.{e}")


@dataclass
class _Placed:
    category_id: int
    full_area: int  # pixels of the shape as drawn, before later occlusion
    visible: int  # pixels still visible
    y0: int  # top-left of the drawn square: the object's pixels all lie in
    x0: int  # [y0, y0 + size) x [x0, x0 + size), so only that window is searched
    size: int


def _radius_for_band(band: int, min_side: int, rng: np.random.Generator) -> int:
    """Circumradius in pixels for size band 0 (small), 1 (medium), 2 (large).

    Ranges are chosen so the drawn (then visible) pixel area mostly lands in the
    COCO band: r 4..14 gives < 32^2 px for every shape, r 20..46 gives
    32^2..96^2 for most, r >= 70 gives > 96^2 for most."""
    limit = max(6, int(0.45 * min_side))
    lo, hi = [(4, 14), (20, 46), (70, limit)][band]
    hi = min(hi, limit)
    lo = min(lo, hi)
    return int(rng.integers(lo, hi + 1))


def render_image(config: ShapesConfig, split: str, index: int
                 ) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """Render image ``index`` of ``split``.

    Returns ``(image uint8 [H, W, 3], objects, instance_ids int16 [H, W])`` where
    each object is ``{'category_id', 'bbox': [x, y, w, h] pixels (visible extent),
    'area': visible px, 'instance': its value in instance_ids, 'full_area': px
    drawn before later shapes covered part of it}``; ``instance_ids`` is 0 on
    background.
    """
    # Every random draw comes from this one generator, in a fixed order: the steps
    # below must keep their order for the dataset to stay byte-identical.
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index])
    h, w = _image_size(config, rng)
    img = background(h, w, rng).astype(np.uint8)
    ids = np.zeros((h, w), dtype=np.int16)  # 0 = background, k = k-th placed object
    placed: list[_Placed] = []
    n_large = 0
    n_wanted = int(rng.integers(1, config.max_objects + 1))
    probs = np.asarray(config.size_band_probs, dtype=np.float64)
    probs = probs / probs.sum()
    for _ in range(n_wanted):
        cat_id, name = config.categories[int(rng.integers(len(config.categories)))]
        band = int(rng.choice(3, p=probs))
        if band == 2 and n_large >= config.max_large:
            band = 1
        r = _radius_for_band(band, min(h, w), rng)
        mask = shape_mask(name, r, rng)
        where = _find_place(mask, ids, placed, rng)
        if where is None:
            continue  # could not place without hiding an earlier shape: skip it
        _paste(img, ids, placed, mask, where, cat_id, rng)
        n_large += band == 2
    return img, _visible_objects(placed, ids), ids


def _image_size(config: ShapesConfig, rng: np.random.Generator) -> tuple[int, int]:
    """``(h, w)``: one of ``sizes``, the square ``image_size`` or a ``variable_size`` draw."""
    if config.sizes is not None:
        h, w = config.sizes[int(rng.integers(len(config.sizes)))]
        return h, w
    if config.variable_size is None:
        return config.image_size, config.image_size
    lo, hi = config.variable_size
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def _find_place(mask: np.ndarray, ids: np.ndarray, placed: list[_Placed],
                rng: np.random.Generator) -> tuple[int, int, np.ndarray] | None:
    """Top-left ``(y0, x0)`` and per-object covered pixel counts of a placement of
    ``mask`` [size, size] that leaves every earlier shape >= 30% visible; None after
    ``_PLACEMENT_TRIES`` failed tries."""
    h, w = ids.shape
    size = mask.shape[0]
    for _try in range(_PLACEMENT_TRIES):
        y0 = int(rng.integers(0, h - size + 1)) if h > size else 0
        x0 = int(rng.integers(0, w - size + 1)) if w > size else 0
        m = mask[: h - y0, : w - x0]  # clipped at the bottom/right image border
        region = ids[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        covered = np.bincount(region[m].ravel(), minlength=len(placed) + 1)  # [1 + placed]
        if all(p.visible - int(covered[k + 1]) >= _MIN_VISIBLE * p.full_area
               for k, p in enumerate(placed) if covered[k + 1]):
            return y0, x0, covered
    return None


def _paste(img: np.ndarray, ids: np.ndarray, placed: list[_Placed], mask: np.ndarray,
           where: tuple[int, int, np.ndarray], category_id: int, rng: np.random.Generator
           ) -> None:
    """Draw a textured shape at ``where`` (from :func:`_find_place`) into ``img`` and
    ``ids``, update the visible counts of the shapes it covers and append it to
    ``placed``."""
    y0, x0, covered = where
    h, w = ids.shape
    m = mask[: h - y0, : w - x0]
    for k, p in enumerate(placed):
        p.visible -= int(covered[k + 1])
    colour = random_colour(rng)
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    patch = texture(kind, m.shape[0], m.shape[1], colour, rng)
    img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = patch[m]
    ids[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = len(placed) + 1
    drawn = int(m.sum())
    placed.append(_Placed(category_id, drawn, drawn, y0, x0, mask.shape[0]))


def _visible_objects(placed: list[_Placed], ids: np.ndarray) -> list[dict[str, Any]]:
    """The annotation of every shape still visible: tight box and pixel count."""
    objects = []
    for k, p in enumerate(placed):
        window = ids[p.y0:p.y0 + p.size, p.x0:p.x0 + p.size]
        ys, xs = np.nonzero(window == k + 1)
        if ys.size == 0:
            continue
        bw, bh = int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1
        x, y = int(xs.min()) + p.x0, int(ys.min()) + p.y0  # window -> image coordinates
        objects.append({"category_id": p.category_id,
                        "bbox": [float(x), float(y), float(bw), float(bh)],
                        "area": float(ys.size), "instance": k + 1,
                        "full_area": float(p.full_area)})
    return objects


def file_name_for(config: ShapesConfig, split: str, index: int) -> tuple[str, bool]:
    """``(file_name relative to the split folder, grayscale?)`` of image ``index``.

    Flat ``000001.jpg`` by default; the hard variant draws a sub-folder, an odd
    name and the colour mode from its own generator, so the drawing is unchanged."""
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], index, 1])
    gray = bool(rng.random() < config.gray_fraction)
    ext = "png" if gray else config.image_format
    image_id = index + 1
    name = (_ODD_NAMES[int(rng.integers(len(_ODD_NAMES)))].format(i=image_id, e=ext)
            if config.odd_names else f"{image_id:06d}.{ext}")
    if config.subfolders:
        k = int(rng.integers(config.subfolders))
        # Every other folder is nested one level deeper, with a space and non-ASCII.
        folder = f"group {k}" + ("/más fotos" if k % 2 else "")
        name = f"{folder}/{name}"
    return name, gray


def _encode(img: np.ndarray, config: ShapesConfig, gray: bool = False) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    if gray:  # single-channel file: loaders must convert it to RGB
        pil.convert("L").save(buf, format="PNG", compress_level=6)
    elif config.image_format == "jpg":
        pil.save(buf, format="JPEG", quality=config.jpeg_quality, optimize=False)
    else:
        pil.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_image(path: Path, data: bytes) -> None:
    """Write-then-rename, so Ctrl-C never leaves a half-written image. Unlike
    ``atomic_write_bytes`` there is no fsync per image: it made generation
    I/O-bound, and after a crash a rerun regenerates identical files anyway."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(path, f"cannot write: {exc.strerror or exc}") from exc


def _write_split(out_dir: Path, split: str, count: int, config: ShapesConfig,
                 progress: bool) -> None:
    from tqdm import tqdm

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(count), desc=f"shapes {split}", unit="img", disable=not progress):
        img, objects, _ = render_image(config, split, i)
        image_id = i + 1
        file_name, gray = file_name_for(config, split, i)
        path = out_dir / split / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_image(path, _encode(img, config, gray))
        images.append({"id": image_id, "file_name": file_name,
                       "height": int(img.shape[0]), "width": int(img.shape[1])})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": obj["category_id"], "bbox": obj["bbox"],
                                "area": obj["area"], "iscrowd": 0})
    categories = [{"id": cid, "name": name, "supercategory": "shape"}
                  for cid, name in sorted(config.categories)]
    doc = {"info": {"description": "detr-edge synthetic shapes", "seed": config.seed,
                    "version": "1"},
           "licenses": [], "images": images, "annotations": annotations,
           "categories": categories}
    atomic_write_text(out_dir / "annotations" / f"instances_{split}.json", json.dumps(doc))


def make_shapes_dataset(out_dir: str | Path, config: ShapesConfig = ShapesConfig(),
                        progress: bool = True) -> Path:
    """Write the dataset (layout in the module docstring) and return ``out_dir``.

    Existing files of the same names are overwritten (atomically), so a rerun
    with the same config repairs an interrupted one.
    """
    config.validate()
    out = Path(out_dir)
    for split, count in (("train", config.num_train), ("val", config.num_val)):
        _write_split(out, split, count, config, progress)
    return out
