"""``detr-edge bundle``: everything the device needs, in one folder with a manifest.

Made on the workstation, read on the device (``build-engine --bundle``,
``benchmark --bundle``), so the device side is two commands. Layout::

    BUNDLE/manifest.json                      what is in it, SHA-256 and size of every file
    BUNDLE/artifacts/*.onnx (+ *.json)        the ONNX variants the benchmark finds (+ reports)
    BUNDLE/calib/...                          calibration images (train split), plain folder
    BUNDLE/data/annotations/instances_<split>.json   the eval images' annotations only
    BUNDLE/data/<split>/<file_name>           the eval images
    BUNDLE/reference.npz                      PyTorch reference (benchmarks.reference_file),
                                              when torch and --checkpoint are available here

The bundle is written into a staging folder inside ``--out`` and swapped in
whole (``runtime.staging``); the output folder may not contain or lie inside an
input. Without torch (or without ``--checkpoint``) the bundle has no reference,
the manifest says why, and the device benchmark then uses ONNX Runtime FP32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.artifacts import find_artifacts
from benchmarks.reference import torch_available
from benchmarks.suite import BenchmarkConfig, write_pytorch_reference
from detr.data.coco_schema import read_coco_json
from runtime import json_limits
from runtime.atomic import atomic_copy, atomic_write_text
from runtime.dataset import annotated_split, check_file_name, resolve_dataset
from runtime.errors import InputError
from runtime.files import file_sha256
from runtime.staging import StagedOutputs, check_disjoint

FORMAT, VERSION = "detr-edge-bundle", 1
MANIFEST = "manifest.json"
ENTRIES = (MANIFEST, "artifacts", "calib", "data", "reference.npz")  # what a bundle owns
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class BundleConfig:
    """What goes into a bundle."""

    artifacts: str  # folder with the ONNX variants (pipeline's OUT/artifacts, export/quantize)
    data: str  # dataset root or split folder: eval images + annotations (+ train split)
    out: str  # the bundle folder
    checkpoint: str | None = None  # runs the PyTorch reference (needs torch); None = none
    split: str = "val"  # eval split
    calib_split: str = "train"  # calibration images come from here (never the eval split)
    images: int | None = 50  # eval images (None = the whole split)
    seed: int | None = None  # None: the first N in annotation order; else a seeded subset
    calib_images: int = 32  # calibration images copied (0 = none)
    second_best: bool = True  # official PostProcess for the reference's AP
    progress: bool = True  # tqdm bars

    def validate(self) -> None:
        if self.images is not None and self.images < 1:
            raise InputError("--images", f"must be >= 1, got {self.images}")
        if self.calib_images < 0:
            raise InputError("--calib-images", f"must be >= 0, got {self.calib_images}")


@dataclass(frozen=True)
class Bundle:
    """A bundle read back and checked (:func:`read_bundle`)."""

    root: Path
    artifacts: Path  # the ONNX variants; build-engine --bundle writes the engines here
    data: Path  # dataset root of the eval subset
    split: str
    calib: Path | None  # calibration image folder, if the bundle has one
    reference: Path | None  # reference.npz, if the bundle has one
    manifest: dict[str, Any]


def subset(images: list[dict[str, Any]], count: int | None, seed: int | None
           ) -> list[dict[str, Any]]:
    """``count`` image records: the first ones, or (``seed``) a seeded random choice
    kept in annotation order."""
    if count is None or count >= len(images):
        return list(images)
    if seed is None:
        return list(images[:count])
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    return [images[int(i)] for i in chosen]


def subset_annotations(gt: dict[str, Any], images: list[dict[str, Any]]) -> dict[str, Any]:
    """A COCO document with only ``images`` and their annotations (every category kept,
    so category ids and AP over categories stay the same)."""
    ids = {im["id"] for im in images}
    doc = {k: v for k, v in gt.items() if k not in ("images", "annotations")}
    doc["images"] = list(images)
    doc["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    return doc


def make_bundle(config: BundleConfig, log: Callable[[str], None] = print) -> Path:
    """Write the bundle (module docstring); returns its folder."""
    config.validate()
    img_dir, ann = annotated_split(config.data, config.split)
    gt = read_coco_json(ann)
    onnx = sorted(p for (backend, _), p in find_artifacts(config.artifacts).items()
                  if backend == "onnxruntime")
    if not onnx:
        raise InputError(config.artifacts, "no detr-edge ONNX model in the artifacts folder")
    inputs = [config.artifacts, config.data] + ([config.checkpoint] if config.checkpoint else [])
    check_disjoint(config.out, inputs)
    chosen = subset(gt["images"], config.images, config.seed)
    with StagedOutputs(config.out, ENTRIES) as staged:
        root = staged.path
        names = _copy_artifacts(onnx, root / "artifacts")
        _copy_images(img_dir, [str(im["file_name"]) for im in chosen], root / "data" /
                     config.split, config.progress, "eval images")
        _write_json(root / "data" / "annotations" / f"instances_{config.split}.json",
                    subset_annotations(gt, chosen))
        calib = _copy_calibration(config, root / "calib", log)
        missing = _reference(config, root, log)
        manifest = {"format": FORMAT, "version": VERSION, "split": config.split,
                    "images": len(chosen), "image_ids": [im["id"] for im in chosen],
                    "subset": {"count": config.images, "seed": config.seed},
                    "onnx": names, "calib_images": calib,
                    "reference": None if missing else "reference.npz",
                    "reference_missing": missing or None,
                    "sources": {"artifacts": str(config.artifacts), "data": str(config.data),
                                "checkpoint": config.checkpoint},
                    "files": _file_table(root, config.progress)}
        _write_json(root / MANIFEST, manifest)
        staged.commit()
    log(f"bundle written: {config.out} ({len(names)} ONNX, {len(chosen)} eval images, "
        f"{calib} calibration images, "
        f"{'PyTorch reference' if not missing else 'no reference: ' + missing})")
    return Path(config.out)


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1))


def _copy_artifacts(onnx: list[Path], dest: Path) -> list[str]:
    """The ONNX files and their JSON reports (``model_int8.quant.json``); engines stay
    behind (built on the device, for its TensorRT and GPU)."""
    dest.mkdir(parents=True)
    for path in onnx:
        reports = [p for p in path.parent.glob(f"{path.stem}.*.json") if ".engine" not in p.name]
        for p in [path, *sorted(reports)]:
            atomic_copy(p, dest / p.name)
    return [p.name for p in onnx]


def _copy_images(src: Path, names: list[str], dest: Path, progress: bool, what: str) -> None:
    for name in tqdm(names, desc=f"bundle {what}", disable=not progress, leave=False):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(src / name, target)


def _copy_calibration(config: BundleConfig, dest: Path, log: Callable[[str], None]) -> int:
    """Up to ``calib_images`` images of the calibration split (never the eval split)."""
    if config.calib_images == 0:
        return 0
    try:
        calib = resolve_dataset(config.data, config.calib_split, default_split="train")
    except InputError as exc:
        log(f"no calibration images in the bundle: {exc}")
        return 0
    names = calib.file_names[: config.calib_images]
    _copy_images(calib.image_dir, names, dest, config.progress, "calibration images")
    return len(names)


def _reference(config: BundleConfig, root: Path, log: Callable[[str], None]) -> str:
    """Write root/reference.npz on the bundle's own files; "" or why there is none."""
    if not config.checkpoint:
        return "no --checkpoint given"
    if not torch_available():
        return "torch is not installed here (pip install 'detr-edge[train]')"
    write_pytorch_reference(BenchmarkConfig(
        data=str(root / "data"), split=config.split, checkpoint=config.checkpoint,
        artifacts=str(root / "artifacts"), max_images=None,
        save_reference=str(root / "reference.npz"), second_best=config.second_best,
        progress=config.progress), log=lambda _: None)
    log(f"PyTorch reference of {config.checkpoint} written into the bundle")
    return ""


def _file_table(root: Path, progress: bool) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "bytes"}}`` of every file under ``root``."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in tqdm(files, desc="bundle hashes", disable=not progress, leave=False)}


def read_bundle(path: str | os.PathLike[str], *, verify: bool = True,
                progress: bool = False) -> Bundle:
    """Read ``BUNDLE/manifest.json`` and check every listed file (size, and SHA-256
    when ``verify``); one-line ``InputError`` naming the bundle otherwise."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "bundle folder not found")
    doc = json_limits.read_json_file(root / MANIFEST, what="bundle manifest", error=InputError,
                                     max_bytes=MAX_MANIFEST_BYTES)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise InputError(root / MANIFEST, f"is not a {FORMAT} version {VERSION} manifest")
    split, files, ref = doc.get("split"), doc.get("files"), doc.get("reference")
    if not isinstance(split, str) or not isinstance(files, dict) or ref not in (None,
                                                                                 "reference.npz"):
        raise InputError(root / MANIFEST, "manifest needs 'split' (text), 'files' (object) "
                         "and 'reference' (null or reference.npz)")
    _check_files(root, files, verify, progress)
    calib = root / "calib"
    return Bundle(root=root, artifacts=root / "artifacts", data=root / "data", split=split,
                  calib=calib if calib.is_dir() and any(calib.iterdir()) else None,
                  reference=root / ref if ref else None, manifest=doc)


def _check_files(root: Path, files: dict[str, Any], verify: bool, progress: bool) -> None:
    for name, entry in tqdm(files.items(), desc="bundle check", disable=not progress,
                            leave=False):
        check_file_name(name, name, root / MANIFEST)  # relative, inside the bundle
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and type(entry.get("bytes")) is int):
            raise InputError(root / MANIFEST, f"entry {name!r} needs 'sha256' and 'bytes'")
        p = root / name
        if not p.is_file():
            raise InputError(root, f"bundle file {name} is missing")
        if p.stat().st_size != entry["bytes"]:
            raise InputError(root, f"bundle file {name} has {p.stat().st_size} bytes, the "
                             f"manifest says {entry['bytes']} (copied incompletely?)")
        if verify and file_sha256(p) != entry["sha256"]:
            raise InputError(root, f"bundle file {name} does not match its SHA-256 in the "
                             "manifest (changed or corrupted)")
