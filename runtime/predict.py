"""``detr-edge predict``: run a Detector over image files/folders, write COCO results
and annotated images."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_bytes, atomic_write_text
from runtime.coco_results import coco_results
from runtime.decode import Detections
from runtime.errors import InputError
from runtime.files import is_regular, kind_of


@dataclass
class PredictConfig:
    model: Path  # ONNX model with detr-edge metadata, or detr-edge engine file
    images: list[Path]  # image files, folders (searched recursively) and/or dataset roots
    out_dir: Path  # receives predictions.json, images.json and annotated/
    threshold: float = 0.5  # minimum score kept (COCO AP wants 0.0; viewing wants ~0.5)
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    providers: list[str] | None = None  # ONNX Runtime providers; None = best available
    top_k: int | None = None  # at most this many detections per image
    second_best: bool = False  # keep no-object slots with their best real class (+AP)
    batch_size: int | None = None  # images per call for dynamic-batch models
    draw: bool = True  # write annotated images
    max_pixels: int | None = None  # image pixel limit; None = runtime.image_io's default
    split: str | None = None  # split of a dataset root in images (None: val, or COCO's val2017)


@dataclass
class PredictSummary:
    num_images: int
    num_detections: int
    results_path: Path
    annotated: list[Path] = field(default_factory=list)


def collect_images(paths: Sequence[str | os.PathLike[str]],
                   split: str | None = None) -> list[Path]:
    """Files as given, folders through ``runtime.dataset.resolve_dataset``: a
    dataset root gives the images of its ``split`` (default val), a split folder
    its images, a plain folder its image files (recursive, sorted)."""
    return collect_inputs(paths, split)[0]


def collect_inputs(paths: Sequence[str | os.PathLike[str]],
                   split: str | None = None) -> tuple[list[Path], list[int]]:
    """``(image files, COCO image ids)`` of ``paths`` (see :func:`collect_images`).

    Ids: a single dataset root or split folder gives its annotation file's ids,
    so ``predictions.json`` scores against those annotations as is; otherwise
    :func:`assign_image_ids`."""
    from runtime.dataset import resolve_dataset

    found: list[Path] = []
    resolved = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            resolved.append(resolve_dataset(p, split, default_split="val"))
            found.extend(resolved[-1].images)
        elif p.is_file() and is_regular(p):
            found.append(p)
        elif p.exists():
            raise InputError(p, f"is {kind_of(p.stat().st_mode)}, not an image file")
        else:
            raise InputError(p, "no such file or folder")
    if not found:
        raise InputError(", ".join(str(p) for p in paths), "no image files found")
    if len(paths) == 1 and resolved and resolved[0].image_ids is not None:
        return found, list(resolved[0].image_ids)
    return found, assign_image_ids(found)


def assign_image_ids(files: Sequence[Path]) -> list[int]:
    """COCO image ids: the numeric file stems when all are numeric and unique
    (COCO's 000000397133.jpg -> 397133, so results match COCO ground truth),
    else 1..N in order."""
    stems = [f.stem for f in files]
    # isascii: '²'.isdigit() is True but int('²') fails; ids must also fit COCO's int64.
    if all(s.isascii() and s.isdigit() and len(s) <= 18 for s in stems) \
            and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(files) + 1))


# Entries of out_dir that predict owns: one run's set replaces the previous run's.
OUTPUT_NAMES = ("predictions.json", "images.json", "annotated")


def predict(config: PredictConfig) -> PredictSummary:
    """Detect objects in every image of ``config.images``; write
    ``out_dir/predictions.json`` (COCO results), ``out_dir/images.json`` (id, file,
    size) and ``out_dir/annotated/<name>``. A bad image raises ``DataError``.

    The output folder may not contain an input or lie inside one. Outputs are
    staged and swapped in when every image has been processed
    (``runtime.staging``): a failed run leaves the previous run's outputs intact.
    Images are decoded one at a time (for the batch, and again for drawing), so
    memory holds one full-size image, not a batch of them.
    """
    from tqdm import tqdm

    from runtime.detector import Detector
    from runtime.preprocess import preprocess
    from runtime.staging import StagedOutputs, check_disjoint

    files, ids = collect_inputs(config.images, config.split)
    check_disjoint(config.out_dir, config.images)
    _check_model_not_output(config.model, config.out_dir)
    detector = Detector(config.model, backend=config.backend, providers=config.providers,
                        batch_size=config.batch_size)
    results: list[dict[str, Any]] = []
    images_doc: list[dict[str, Any]] = []
    names: list[str] = []
    used_names: set[str] = set()
    with StagedOutputs(config.out_dir, OUTPUT_NAMES) as staged, detector, \
            tqdm(total=len(files), unit="img", desc="predict", disable=None) as bar:
        for start in range(0, len(files), detector.batch_size):
            chunk = files[start:start + detector.batch_size]
            batch = preprocess(chunk, detector.meta, max_pixels=config.max_pixels)
            dets = detector.detect(batch, score_threshold=config.threshold,
                                   top_k=config.top_k, second_best=config.second_best)
            for path, image_id, (h, w), det in zip(chunk, ids[start:], batch.orig_sizes, dets):
                results.extend(coco_results([image_id], [det], detector.meta.label_map,
                                            [str(path)]))
                images_doc.append({"id": image_id, "file_name": str(path),
                                   "height": int(h), "width": int(w)})
                if config.draw:
                    name = _unique_name(path, used_names)
                    _draw(path, det, staged.path / "annotated" / name, config.max_pixels)
                    names.append(name)
            bar.update(len(chunk))
        atomic_write_text(staged.path / "predictions.json", json.dumps(results, indent=1))
        atomic_write_text(staged.path / "images.json", json.dumps(images_doc, indent=1))
        staged.commit()
    return PredictSummary(num_images=len(files), num_detections=len(results),
                          results_path=config.out_dir / "predictions.json",
                          annotated=[config.out_dir / "annotated" / n for n in names])


def _check_model_not_output(model: Path, out_dir: Path) -> None:
    """The model file must not be one of the entries a run replaces."""
    real = Path(os.path.realpath(model))
    for name in OUTPUT_NAMES:
        owned = Path(os.path.realpath(out_dir / name))
        if real == owned or owned in real.parents:
            raise InputError("--out", f"the model {model} is inside {out_dir / name}, "
                             "which predict replaces; choose another output folder")


def _draw(path: Path, det: Detections, target: Path, max_pixels: int | None) -> None:
    """Decode ``path`` again and write it with its detections drawn."""
    from runtime.draw import draw_detections
    from runtime.image_io import load_image

    target.parent.mkdir(parents=True, exist_ok=True)
    _save_image(draw_detections(load_image(path, max_pixels), det), target)


def _save_image(picture: Any, target: Path) -> None:
    """Encode in memory, then write atomically: an interrupted run never leaves a
    half-written annotated image, and a full disk is a one-line error naming it."""
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG" if target.suffix in (".jpg", ".jpeg") else "PNG")
    atomic_write_bytes(target, buffer.getvalue())


def _unique_name(path: Path, used: set[str]) -> str:
    """Output file name for ``path``: same name (PNG unless JPEG/PNG), made unique."""
    suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
    name, n = f"{path.stem}{suffix}", 1
    while name in used:
        n += 1
        name = f"{path.stem}_{n}{suffix}"
    used.add(name)
    return name
