"""Resolve what a user passes as image data into image files and annotations.

Every command that takes images (``predict --images``, ``--calib-data`` of
``export-onnx`` / ``quantize`` / ``check-onnx`` / ``build-engine``, ``--data`` of
``train`` / ``eval`` / ``benchmark`` / ``pretrain-backbone`` / ``pipeline``) goes
through :func:`resolve_dataset`, so all of them accept the same three forms:

- a **dataset root** in COCO layout: ``ROOT/annotations/instances_<split>.json``
  and ``ROOT/<split>/`` (what ``make-dataset`` writes; COCO 2017 with splits
  ``train2017`` / ``val2017``). The split's images are the annotation file's
  ``images`` records, ``ROOT/<split>/<file_name>``: ``file_name`` may hold
  sub-folders and any characters; files in the folder that the annotations do not
  list are not used;
- a **split folder** ``ROOT/<split>`` of such a dataset (its annotations are found
  at ``ROOT/annotations/instances_<split>.json``);
- a **plain image folder**: every image file under it (recursive, sorted by
  path), no annotations.

Torch-free (``predict`` runs on devices without torch):
the annotation file is parsed only as far as its ``images`` records;
``detr.data.coco_schema`` validates the whole document where training and
evaluation need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from runtime.errors import DataError, InputError

ANNOTATIONS_DIR = "annotations"


@dataclass(frozen=True)
class DatasetSplit:
    """One split of a dataset, or a plain image folder.

    ``images`` and ``image_ids`` are parallel lists in annotation order (sorted by
    COCO image id); for a plain folder ``image_ids`` is None and ``images`` are
    sorted by path.
    """

    root: Path  # dataset root (holds annotations/), or the plain image folder given
    split: str | None  # split name ("val", "train2017"); None for a plain image folder
    image_dir: Path  # the folder annotation file_names are relative to (ROOT/<split>)
    images: list[Path]  # image files, every one exists
    annotations: Path | None  # ROOT/annotations/instances_<split>.json; None for a plain folder
    image_ids: list[int] | None  # COCO image id of each image; None without annotations

    @property
    def file_names(self) -> list[str]:
        """Each image's path relative to ``image_dir``, '/'-separated (COCO ``file_name``)."""
        return [p.relative_to(self.image_dir).as_posix() for p in self.images]

    def describe(self) -> str:
        """One line for logs: ``"val of data/shapes (200 images, annotated)"``."""
        if self.split is None:
            return f"{self.root} ({len(self.images)} images, no annotations)"
        return f"{self.split} of {self.root} ({len(self.images)} images, annotated)"


def annotation_file(root: str | os.PathLike[str], split: str) -> Path:
    """``ROOT/annotations/instances_<split>.json`` (whether or not it exists)."""
    return Path(root) / ANNOTATIONS_DIR / f"instances_{split}.json"


def dataset_splits(root: str | os.PathLike[str]) -> list[str]:
    """Split names with an annotation file under ``ROOT/annotations/``, sorted."""
    folder = Path(root) / ANNOTATIONS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name[len("instances_"):-len(".json")]
                  for p in folder.glob("instances_*.json") if p.is_file())


def is_dataset_root(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has at least one ``annotations/instances_<split>.json``."""
    return bool(dataset_splits(path))


def resolve_dataset(path: str | os.PathLike[str], split: str | None = None, *,
                    default_split: str = "val") -> DatasetSplit:
    """Resolve a dataset root, a split folder or a plain image folder (module docstring).

    ``split`` picks the split of a dataset root (``default_split`` when None:
    commands pass ``"train"`` for calibration, ``"val"`` for prediction and
    evaluation; when the root has no split of that name but exactly one that
    starts with it, e.g. COCO's ``val2017``, that one). Given a split folder, ``split`` must be None or its name; given
    a plain folder it must be None.

    Raises ``InputError`` for a missing path or a split that does not fit, and
    ``DataError`` naming the annotation file for a bad one or a listed image
    that is missing.
    """
    from runtime.image_io import list_image_files

    p = Path(path)
    found = locate_split(p, split, default_split=default_split)
    if found is None:
        return DatasetSplit(root=p, split=None, image_dir=p, images=list_image_files(p),
                            annotations=None, image_ids=None)
    root, name = found
    return _annotated(root, name, annotation_file(root, name))


def locate_split(path: str | os.PathLike[str], split: str | None = None, *,
                 default_split: str = "val") -> tuple[Path, str] | None:
    """``(dataset root, split name)`` that ``path`` / ``split`` designate, with the
    annotation file checked to exist but not read; None for a plain image folder.
    The rules and errors of :func:`resolve_dataset`, which uses it."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such folder")
    if not p.is_dir():
        raise InputError(p, "expected a folder (a dataset root, a split folder or images)")
    if is_dataset_root(p):
        chosen = split or _default_split(p, default_split)
        ann = annotation_file(p, chosen)
        if not ann.is_file():
            raise InputError(p, f"dataset has no split {chosen!r} (no {ann.relative_to(p)}); "
                             f"its splits: {', '.join(dataset_splits(p))}")
        return p, chosen
    if annotation_file(p.parent, p.name).is_file():  # a split folder ROOT/<split>
        if split is not None and split != p.name:
            raise InputError(p, f"is the {p.name!r} split folder, not split {split!r}; "
                             "pass the dataset root to choose a split")
        return p.parent, p.name
    if split is not None:
        raise InputError(p, f"split {split!r} needs a dataset root (a folder with "
                         f"{ANNOTATIONS_DIR}/instances_{split}.json); this is a plain image folder")
    return None


def annotated_split(path: str | os.PathLike[str], split: str | None = None, *,
                    default_split: str = "val") -> tuple[Path, Path]:
    """``(image folder, annotation file)`` of a dataset root's split or a split
    folder, without reading the annotations (training and ``eval`` validate them
    fully). ``DataError`` for a plain image folder or a missing image folder."""
    p = Path(path)
    if p.is_dir() and not is_dataset_root(p) and not annotation_file(p.parent, p.name).is_file():
        raise DataError(p, f"not a dataset: no {ANNOTATIONS_DIR}/instances_"
                        f"{split or default_split}.json (COCO layout: ROOT/{ANNOTATIONS_DIR}/"
                        "instances_<split>.json + ROOT/<split>/)")
    found = locate_split(p, split, default_split=default_split)
    assert found is not None  # a dataset root or a split folder, checked above
    root, name = found
    if not (root / name).is_dir():
        raise DataError(root / name, f"image folder of split {name!r} not found")
    return root / name, annotation_file(root, name)


def _default_split(root: Path, name: str) -> str:
    """``name``, or the one split named ``name<suffix>`` (COCO's ``train2017``)."""
    splits = dataset_splits(root)
    if name in splits:
        return name
    similar = [s for s in splits if s.startswith(name)]
    return similar[0] if len(similar) == 1 else name


def check_file_name(image_id: Any, name: Any, where: str | os.PathLike[str]) -> None:
    """A COCO ``file_name`` must be a non-empty relative path inside the image folder."""
    if not isinstance(name, str) or not name:
        raise DataError(where, f"image {image_id} needs a non-empty string 'file_name'")
    # Keep every image inside the image folder: no absolute paths, no '..'.
    for flavour in (PurePosixPath, PureWindowsPath):
        q = flavour(name)
        if q.is_absolute() or q.anchor or ".." in q.parts:
            raise DataError(where, f"image {image_id} file_name {name!r} must be a relative "
                            "path inside the image folder")
    if "\x00" in name:
        raise DataError(where, f"image {image_id} file_name contains a NUL character")


def read_image_records(ann: Path) -> list[tuple[int, str]]:
    """``(image id, file_name)`` of every ``images`` record of ``ann``, sorted by id."""
    from runtime import json_limits

    doc = json_limits.read_json_file(ann, what="annotation file")  # bounded, one-line errors
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not images:
        raise DataError(ann, "needs a non-empty 'images' list")
    records = []
    for k, im in enumerate(images):
        if not isinstance(im, dict) or type(im.get("id")) is not int:
            raise DataError(ann, f"images[{k}] needs an integer 'id'")
        check_file_name(im["id"], im.get("file_name"), ann)
        records.append((im["id"], im["file_name"]))
    if len({i for i, _ in records}) != len(records):
        raise DataError(ann, "image ids are not unique")
    return sorted(records)


def _annotated(root: Path, split: str, ann: Path) -> DatasetSplit:
    image_dir = root / split
    if not image_dir.is_dir():
        raise DataError(ann, f"image folder {image_dir} not found")
    records = read_image_records(ann)
    images = [image_dir / name for _, name in records]
    missing = [(i, name) for (i, name), f in zip(records, images) if not f.is_file()]
    if missing:
        i, name = missing[0]
        raise DataError(ann, f"{len(missing)} of {len(records)} listed images are not in "
                        f"{image_dir} (first: image {i}, {name!r})")
    return DatasetSplit(root=root, split=split, image_dir=image_dir, images=images,
                        annotations=ann, image_ids=[i for i, _ in records])
