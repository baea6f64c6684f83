"""Validation of a COCO detection annotation document before anything uses it.

pycocotools trusts its input and fails deep inside with a KeyError or
TypeError; here every problem becomes ``DataError(ann_file, problem)`` whose
problem names the record at fault, e.g. ``"annotation 17 has bbox with
negative width"`` or ``"annotation 3 refers to unknown category_id 99"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime import json_limits
from runtime.dataset import check_file_name
from runtime.errors import DataError
from runtime.json_limits import is_finite_number, is_int


def read_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read, parse and validate ``ann_file``; return the document (unchanged)."""
    path = Path(ann_file)
    if path.is_dir():
        raise DataError(path, "is a directory, not an annotation file")
    # NaN literals parse, so validate_coco can name the annotation that holds one.
    doc = json_limits.read_json_file(path, what="annotation file", allow_nan=True)
    validate_coco(doc, path)
    return doc






def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _list_of_objects(doc: dict[str, Any], key: str, where: Path) -> list[dict[str, Any]]:
    if key not in doc:
        raise DataError(where, f"missing key '{key}'")
    items = doc[key]
    if not isinstance(items, list):
        raise DataError(where, f"'{key}' must be an array, got {_type_name(items)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(where, f"'{key}' entry at index {i} must be an object, "
                            f"got {_type_name(item)}")
    return items


def _record_id(kind: str, i: int, item: dict[str, Any], where: Path) -> int:
    """The integer ``id`` of a record, or an error naming the record by index."""
    if "id" not in item:
        raise DataError(where, f"{kind} at index {i} has no 'id'")
    if not is_int(item["id"]):
        raise DataError(where, f"{kind} at index {i} has id {item['id']!r}: must be an integer")
    return item["id"]


def _check_unique(kind: str, ids: list[int], where: Path) -> None:
    seen: set[int] = set()
    for v in ids:
        if v in seen:
            raise DataError(where, f"duplicate {kind} id {v}")
        seen.add(v)


def _check_categories(doc: dict[str, Any], where: Path) -> set[int]:
    cats = _list_of_objects(doc, "categories", where)
    if not cats:
        raise DataError(where, "no categories")
    ids = [_record_id("category", i, c, where) for i, c in enumerate(cats)]
    _check_unique("category", ids, where)
    for c in cats:
        if not isinstance(c.get("name"), str) or not c["name"]:
            raise DataError(where, f"category {c['id']} needs a non-empty string 'name'")
    return set(ids)


def _check_images(doc: dict[str, Any], where: Path) -> set[int]:
    images = _list_of_objects(doc, "images", where)
    if not images:
        raise DataError(where, "no images")
    ids = [_record_id("image", i, im, where) for i, im in enumerate(images)]
    _check_unique("image", ids, where)
    for im in images:
        check_file_name(im["id"], im.get("file_name"), where)
        for key in ("height", "width"):
            if key in im and not (is_int(im[key]) and im[key] > 0):
                raise DataError(where, f"image {im['id']} has {key} {im[key]!r}: "
                                "must be a positive integer")
    return set(ids)


def _check_bbox(name: str, bbox: Any, where: Path) -> None:
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(where, f"{name} needs 'bbox' as 4 numbers [x, y, w, h], got {bbox!r:.80}")
    if not all(is_finite_number(v) for v in bbox):
        raise DataError(where, f"{name} has bbox {bbox!r:.80} with a non-numeric or non-finite value")
    if bbox[2] < 0:
        raise DataError(where, f"{name} has bbox with negative width")
    if bbox[3] < 0:
        raise DataError(where, f"{name} has bbox with negative height")


def _check_annotations(doc: dict[str, Any], where: Path, image_ids: set[int],
                       category_ids: set[int]) -> None:
    anns = _list_of_objects(doc, "annotations", where)
    ids = [_record_id("annotation", i, a, where) for i, a in enumerate(anns)]
    _check_unique("annotation", ids, where)
    for a in anns:
        name = f"annotation {a['id']}"
        for key in ("image_id", "category_id"):
            if key not in a:
                raise DataError(where, f"{name} has no '{key}'")
            if not is_int(a[key]):
                raise DataError(where, f"{name} has {key} {a[key]!r:.40}: must be an integer")
        if a["image_id"] not in image_ids:
            raise DataError(where, f"{name} refers to unknown image_id {a['image_id']}")
        if a["category_id"] not in category_ids:
            raise DataError(where, f"{name} refers to unknown category_id {a['category_id']}")
        if "bbox" not in a:
            raise DataError(where, f"{name} has no 'bbox'")
        _check_bbox(name, a["bbox"], where)
        if "iscrowd" in a and a["iscrowd"] not in (0, 1):
            raise DataError(where, f"{name} has iscrowd {a['iscrowd']!r:.40}: must be 0 or 1")
        if "area" in a and not (is_finite_number(a["area"]) and a["area"] >= 0):
            raise DataError(where, f"{name} has area {a['area']!r:.40}: must be a number >= 0")
        if "segmentation" in a and not isinstance(a["segmentation"], (list, dict)):
            raise DataError(where, f"{name} has segmentation of type "
                            f"{_type_name(a['segmentation'])}: must be polygons or RLE")


def validate_coco(doc: Any, where: Path) -> None:
    """Raise ``DataError(where, problem)`` unless ``doc`` is a usable COCO detection document."""
    if not isinstance(doc, dict):
        raise DataError(where, f"top level must be a JSON object, got {_type_name(doc)}")
    category_ids = _check_categories(doc, where)
    image_ids = _check_images(doc, where)
    _check_annotations(doc, where, image_ids, category_ids)


def rle_string_counts(text: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string, or None if it is malformed.

    Format (pycocotools' ``rleToString``): each run is a signed integer written
    in 5-bit groups, low bits first, one printable character per group
    (``chr(group + 48)``, bit 0x20 = more groups follow, bit 0x10 of the last
    group = sign); from the third run on, the value is the difference to the
    run two places earlier. Checked here because pycocotools' decoder writes
    past the mask buffer when the runs add up to more than the image size.
    """
    counts: list[int] = []
    i = 0
    while i < len(text):
        value, shift, more = 0, 0, True
        while more:
            if i >= len(text) or shift > 60:
                return None
            c = ord(text[i]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            i += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def require_objects(doc: dict[str, Any], where: str | Path,
                    image_ids: set[int] | None = None) -> None:
    """Raise ``DataError`` when no (non-crowd) annotation lies on ``image_ids`` (default:
    every image): COCO AP is then undefined, and COCOeval would report -1."""
    for ann in doc.get("annotations", []):
        if not ann.get("iscrowd", 0) and (image_ids is None or ann.get("image_id") in image_ids):
            return
    scope = "the evaluated images have" if image_ids is not None else "the split has"
    raise DataError(where, f"{scope} no annotated objects, so AP is undefined (COCO reports "
                    "-1); evaluate a split with annotations")
