"""The PyTorch reference as a file: written on the workstation, read on the device.

``benchmark --save-reference FILE`` (and ``bundle``) store what PyTorch FP32
gives on the benchmark's images, so a device without torch still reports every
ONNX Runtime / TensorRT row against the model as trained. One ``.npz`` file
(numpy's zip of ``.npy`` arrays, read with ``allow_pickle=False``):

- ``header``: uint8 bytes of a JSON object: ``format``/``version``, ``name``,
  ``accuracy`` (AP keys, the model as trained: official protocol on the original
  images), ``protocol``, ``eval_images``, ``training_resize``,
  ``canvas_accuracy`` (PyTorch FP32 on the artifacts' canvas), ``fingerprint``
  (:class:`Fingerprint`: what the reference was made on);
- ``logits`` float32 [N, Q, K+1] and ``boxes`` float32 [N, Q, 4] (normalised
  cxcywh): PyTorch FP32 on the canvas, image order = ``fingerprint.image_ids``;
- ``det_image_id`` int64 [M], ``det_category_id`` int64 [M], ``det_bbox``
  float32 [M, 4] (COCO xywh, original pixels), ``det_score`` float32 [M]: the
  as-trained detections.

The file comes from elsewhere, so it is checked where it enters: regular file,
zip members and sizes before anything is decompressed, the header through the
bounded JSON reader, every array's dtype, shape and finiteness, and the
fingerprint against what this benchmark evaluates (:func:`check_matches`).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np

from runtime import json_limits
from runtime.atomic import atomic_write
from runtime.errors import InputError
from runtime.files import open_regular

FORMAT = "detr-edge-reference"
VERSION = 1
MAX_HEADER_BYTES = 64 << 20  # image ids and names of a few hundred thousand images
MAX_ARRAY_BYTES = 16 << 30  # sum of the decompressed arrays (COCO val 5000 x 100 x 92: 0.2 GB)
ARRAYS = ("header", "logits", "boxes", "det_image_id", "det_category_id", "det_bbox", "det_score")


@dataclass(frozen=True)
class Fingerprint:
    """What a reference was computed on; the device's benchmark must evaluate the same."""

    image_ids: list[int]  # COCO ids of the evaluated images, in evaluation order
    file_names: list[str]  # their file_name records
    images_sha256: str  # SHA-256 over the image files' bytes, in that order
    gt_sha256: str  # SHA-256 of those images' annotation records (see gt_digest)
    height: int  # canvas of the artifact rows
    width: int
    with_mask: bool
    resize: list[int] | None  # (shorter, longest) resize rule of the canvas, or None
    class_names: list[str]
    label_map: list[int]
    decoding: str  # runtime.decode.decoding_protocol
    onnx_fp32_sha256: str | None  # the FP32 ONNX of the artifacts (None: there was none)
    checkpoint_sha256: str | None  # the checkpoint the reference ran


@dataclass
class ReferenceData:
    """A reference file's contents (module docstring)."""

    header: dict[str, Any]
    logits: np.ndarray  # float32 [N, Q, K+1]
    boxes: np.ndarray  # float32 [N, Q, 4] normalised cxcywh
    detections: dict[str, np.ndarray]  # det_* arrays, as trained

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(**self.header["fingerprint"])


def images_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the bytes of ``paths`` in order (each file's length first)."""
    h = hashlib.sha256()
    for p in paths:
        data = Path(p).read_bytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def gt_digest(gt: dict[str, Any], image_ids: Sequence[int]) -> str:
    """SHA-256 of the ground truth that scores ``image_ids``: the fields of their image
    and annotation records and of every category that COCO AP reads, as canonical
    JSON. A subset annotation file (``bundle``) gives the same digest as the full
    file, and keys COCOeval adds while scoring (``ignore``) do not count."""
    def pick(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: record[k] for k in keys if k in record}

    wanted = {int(i) for i in image_ids}
    images = sorted((pick(im, _IMAGE_KEYS) for im in gt["images"] if im["id"] in wanted),
                    key=lambda im: im["id"])
    anns = sorted((pick(a, _ANN_KEYS) for a in gt["annotations"] if a["image_id"] in wanted),
                  key=lambda a: (a["image_id"], a.get("id", 0)))
    cats = sorted((pick(c, ("id", "name")) for c in gt["categories"]), key=lambda c: c["id"])
    text = json.dumps({"images": images, "annotations": anns, "categories": cats},
                      sort_keys=True, separators=(",", ":"), default=float)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def detections_arrays(results: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """COCO results (``detr.coco_eval`` format) -> the compact det_* arrays."""
    return {
        "det_image_id": np.asarray([r["image_id"] for r in results], np.int64),
        "det_category_id": np.asarray([r["category_id"] for r in results], np.int64),
        "det_bbox": np.asarray([r["bbox"] for r in results], np.float32).reshape(-1, 4),
        "det_score": np.asarray([r["score"] for r in results], np.float32),
    }


def save_reference(path: str | os.PathLike[str], data: ReferenceData) -> Path:
    """Write ``data`` atomically to ``path`` (compressed npz); returns the path."""

    header = {"format": FORMAT, "version": VERSION, **data.header}
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    arrays: dict[str, np.ndarray] = {"header": np.frombuffer(text, np.uint8),
              "logits": np.ascontiguousarray(data.logits, np.float32),
              "boxes": np.ascontiguousarray(data.boxes, np.float32), **data.detections}
    out = Path(path)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as fh:
        np.savez_compressed(fh, **cast(dict[str, Any], arrays))  # stubs: kwargs vs allow_pickle
    return out


def load_reference(path: str | os.PathLike[str]) -> ReferenceData:
    """Read and check a reference file; ``InputError(path, ...)`` in one line otherwise."""

    p = Path(path)
    with open_regular(p, error=InputError) as fh:
        arrays = _read_arrays(fh, p)
    header = json_limits.loads(arrays.pop("header").tobytes(), p, what="reference header",
                               error=InputError, max_bytes=MAX_HEADER_BYTES)
    _check_header(header, p)
    data = ReferenceData(header=header, logits=arrays.pop("logits"), boxes=arrays.pop("boxes"),
                         detections=arrays)
    _check_arrays(data, p)
    return data


def _read_arrays(fh: Any, p: Path) -> dict[str, np.ndarray]:
    """The npz members, sizes checked from the zip directory before decompression."""
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            names = sorted(n[:-4] for n in infos if n.endswith(".npy"))
            if sorted(infos) != sorted(f"{n}.npy" for n in names) or set(names) != set(ARRAYS):
                raise InputError(p, f"is not a detr-edge reference file (members "
                                 f"{sorted(infos)[:8]}, expected {list(ARRAYS)})")
            total = sum(i.file_size for i in infos.values())
            if total > MAX_ARRAY_BYTES:
                raise InputError(p, f"reference arrays hold {total} bytes, above the limit "
                                 f"of {MAX_ARRAY_BYTES}")
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as npz:
                return {name: npz[name] for name in ARRAYS}
    except InputError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, zipfile.LargeZipFile,
            NotImplementedError) as exc:
        raise InputError(p, f"is not a readable detr-edge reference file (truncated or not "
                         f"an npz: {type(exc).__name__}: {exc})") from exc


_TYPES: dict[str, tuple[type, ...]] = {
    "image_ids": (list,), "file_names": (list,), "images_sha256": (str,), "gt_sha256": (str,),
    "height": (int,), "width": (int,), "with_mask": (bool,), "resize": (list, type(None)),
    "class_names": (list,), "label_map": (list,), "decoding": (str,),
    "onnx_fp32_sha256": (str, type(None)), "checkpoint_sha256": (str, type(None)),
}


def _check_header(header: Any, p: Path) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InputError(p, f"is not a detr-edge reference file (no format {FORMAT!r})")
    if header.get("version") != VERSION:
        raise InputError(p, f"reference format version {header.get('version')!r}; this "
                         f"detr-edge reads version {VERSION}")
    for key, kind in (("name", str), ("accuracy", dict), ("canvas_accuracy", dict),
                      ("protocol", dict), ("eval_images", int), ("fingerprint", dict)):
        if not isinstance(header.get(key), kind):
            raise InputError(p, f"reference header field {key!r} must be a {kind.__name__}")
    for key in ("accuracy", "canvas_accuracy"):
        values = header[key]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and -1 <= v <= 1 for v in values.values()):
            raise InputError(p, f"reference {key} must map AP names to numbers in [-1, 1]")
    fp = header["fingerprint"]
    if set(fp) != {f.name for f in fields(Fingerprint)}:
        raise InputError(p, f"reference fingerprint fields {sorted(fp)} are not "
                         f"{sorted(f.name for f in fields(Fingerprint))}")
    for key, kinds in _TYPES.items():
        if not isinstance(fp[key], kinds) or (kinds == (int,) and isinstance(fp[key], bool)):
            raise InputError(p, f"reference fingerprint {key!r} has the wrong type")
    ok = (all(type(i) is int for i in fp["image_ids"] + fp["label_map"])
          and all(isinstance(s, str) for s in fp["file_names"] + fp["class_names"])
          and len(fp["file_names"]) == len(fp["image_ids"]) == header["eval_images"] >= 1
          and len(fp["class_names"]) == len(fp["label_map"]) >= 1)
    if not ok:
        raise InputError(p, "reference fingerprint lists disagree (image ids, file names, "
                         "eval_images, class names, label map)")


def _check_arrays(data: ReferenceData, p: Path) -> None:
    fp = data.fingerprint
    n, k = len(fp.image_ids), len(fp.class_names)
    lo, bo = data.logits, data.boxes
    if lo.dtype != np.float32 or lo.ndim != 3 or lo.shape[0] != n or lo.shape[2] != k + 1:
        raise InputError(p, f"reference logits are {lo.dtype} {list(lo.shape)}, expected "
                         f"float32 [{n}, Q, {k + 1}]")
    if bo.dtype != np.float32 or bo.shape != (n, lo.shape[1], 4):
        raise InputError(p, f"reference boxes are {bo.dtype} {list(bo.shape)}, expected "
                         f"float32 [{n}, {lo.shape[1]}, 4]")
    if not (np.isfinite(lo).all() and np.isfinite(bo).all()):
        raise InputError(p, "reference outputs hold NaN or infinite values")
    d = data.detections
    m = len(d["det_score"])
    shapes = {"det_image_id": (np.int64, (m,)), "det_category_id": (np.int64, (m,)),
              "det_bbox": (np.float32, (m, 4)), "det_score": (np.float32, (m,))}
    for name, (dtype, shape) in shapes.items():
        if d[name].dtype != dtype or d[name].shape != shape:
            raise InputError(p, f"reference {name} is {d[name].dtype} {list(d[name].shape)}, "
                             f"expected {np.dtype(dtype)} {list(shape)}")
    if not (np.isfinite(d["det_bbox"]).all() and np.isfinite(d["det_score"]).all()):
        raise InputError(p, "reference detections hold NaN or infinite values")
    if not (np.isin(d["det_image_id"], fp.image_ids).all()
            and np.isin(d["det_category_id"], fp.label_map).all()):
        raise InputError(p, "reference detections name images or categories it was not made on")


def check_matches(data: ReferenceData, expected: Fingerprint, path: str | os.PathLike[str]
                  ) -> None:
    """Refuse a reference made on other images, annotations, model or protocol (one line)."""
    got = data.fingerprint
    if got.image_ids != expected.image_ids or got.file_names != expected.file_names:
        raise InputError(path, f"reference was made on other images ({len(got.image_ids)} "
                         f"images, ids {_ids(got.image_ids)}) than this benchmark evaluates "
                         f"({len(expected.image_ids)} images, ids {_ids(expected.image_ids)}); "
                         "use the same --data, --split and --max-images")
    checks = [
        ("images_sha256", "the image files differ from those it was made on"),
        ("gt_sha256", "the annotations of these images differ from those it was made on"),
        ("onnx_fp32_sha256", "it was made for another FP32 ONNX model"),
        ("checkpoint_sha256", "it was made from another checkpoint"),
        ("class_names", "it was made for other classes"), ("label_map", "other category ids"),
        ("height", "another canvas"), ("width", "another canvas"),
        ("with_mask", "another input form (mask)"), ("resize", "another resize rule"),
        ("decoding", "another decoding"),
    ]
    for key, why in checks:
        a, b = getattr(got, key), getattr(expected, key)
        if key.endswith("_sha256") and key in ("onnx_fp32_sha256", "checkpoint_sha256") and (
                a is None or b is None):
            continue  # not known on one side: the other fields still tie it down
        if a != b:
            raise InputError(path, f"reference does not fit this benchmark: {why} "
                             f"({key} {_short(a)} vs {_short(b)} here)")


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids[:3])) + (", ..." if len(ids) > 3 else "")


def _short(value: Any) -> str:
    text = str(value)
    return text[:16] if isinstance(value, str) and len(text) == 64 else text[:60]
