"""Which reference a benchmark run measures every row against, in this order:

1. ``pytorch``: PyTorch FP32 as trained (``detr.evaluate``'s official protocol),
   when torch is installed and a checkpoint is given (the workstation);
2. ``file``: a reference file written on the workstation
   (``benchmark --save-reference`` or a ``bundle``; ``benchmarks.reference_file``),
   so a device without torch still reports every row against PyTorch;
3. ``onnxruntime``: ONNX Runtime FP32 of the FP32 ONNX on the artifacts' canvas,
   labelled as such everywhere: the rows' deltas are then the precision/runtime
   loss against the deployed FP32 graph, not against the model as trained.

Nothing here imports torch: the torch-free device path runs through this module.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reference_file import (
    Fingerprint,
    ReferenceData,
    check_matches,
    detections_arrays,
    gt_digest,
    images_digest,
    load_reference,
)
from runtime.decode import decoding_protocol
from runtime.errors import InputError
from runtime.files import file_sha256

PYTORCH, FILE, ONNXRUNTIME = "pytorch", "file", "onnxruntime"
ORT_REFERENCE_NAME = "ONNX Runtime FP32 (no PyTorch reference)"
ORT_REFERENCE_NOTE = ("reference = ONNX Runtime FP32 of the FP32 ONNX on the artifacts' "
                      "canvas, not PyTorch: deltas are the loss against the deployed FP32 "
                      "graph only (write a PyTorch reference on the workstation with "
                      "`benchmark --save-reference FILE` or `bundle`)")


def torch_available() -> bool:
    """Whether torch can be imported here, without importing it."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a blocked or broken torch counts as absent
        return False


def choose_source(checkpoint: str | None, reference_file: str | None,
                  log: Callable[[str], None] = print) -> tuple[str, str]:
    """``(source, why PyTorch does not run here or "")`` in the module's order."""
    has_torch = torch_available()
    if checkpoint and has_torch:
        if reference_file:
            log(f"PyTorch runs here: the reference file {reference_file} is not used")
        return PYTORCH, ""
    why = ("torch is not installed (pip install 'detr-edge[train]' on the workstation)"
           if not has_torch else "no --checkpoint given")
    if checkpoint:
        log(f"{why}: the checkpoint {checkpoint} is not run")
    return (FILE if reference_file else ONNXRUNTIME), why


def default_threads() -> int:
    """CPU threads of the CPU backends when neither --threads nor torch says:
    OMP_NUM_THREADS, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fingerprint_of(ctx: Any, config: Any, artifacts: dict[tuple[str, str], Path]) -> Fingerprint:
    """What this run evaluates (``ctx``: ``benchmarks.suite.SuiteContext``)."""

    meta = ctx.meta
    fp32 = artifacts.get(("onnxruntime", "fp32"))
    ckpt = config.checkpoint
    return Fingerprint(
        image_ids=list(ctx.image_ids), file_names=list(ctx.file_names),
        images_sha256=images_digest(ctx.paths), gt_sha256=gt_digest(ctx.gt, ctx.image_ids),
        height=meta.input_height, width=meta.input_width, with_mask=bool(meta.with_mask),
        resize=[meta.resize_shorter, meta.resize_max] if meta.resize_shorter else None,
        class_names=list(meta.class_names), label_map=[int(c) for c in meta.label_map],
        decoding=decoding_protocol(config.second_best),
        onnx_fp32_sha256=file_sha256(fp32) if fp32 is not None else None,
        checkpoint_sha256=file_sha256(ckpt) if ckpt and Path(ckpt).is_file() else None)


def load_matching(path: str, expected: Fingerprint) -> ReferenceData:
    """The reference file at ``path``, refused unless made on what this run evaluates."""
    data = load_reference(path)
    check_matches(data, expected, path)
    return data


def file_reference(data: ReferenceData, path: str) -> dict[str, Any]:
    """The report's reference entry for a reference file."""
    h = data.header
    return {"name": f"{h['name']} (from reference file {Path(path).name})",
            "accuracy": dict(h["accuracy"]), "eval_images": h["eval_images"],
            "protocol": dict(h["protocol"]), "training_resize": h.get("training_resize"),
            "source": FILE, "file": str(path)}


def ort_reference(row: Any, settings_form: str, decoding: str) -> dict[str, Any]:
    """The report's reference entry when ONNX Runtime FP32 is the reference."""
    if row.accuracy is None:
        raise InputError("reference", "no PyTorch reference here (torch or --checkpoint "
                         "missing, no --reference file) and the ONNX Runtime FP32 row did "
                         f"not run ({row.reason or row.status}): nothing to compare against")
    return {"name": ORT_REFERENCE_NAME, "accuracy": dict(row.accuracy),
            "eval_images": row.eval_images,
            "protocol": {"resize": settings_form, "decoding": decoding},
            "source": ONNXRUNTIME, "note": ORT_REFERENCE_NOTE}


def reference_data(reference: dict[str, Any], detections: list[dict[str, Any]],
                   canvas_accuracy: dict[str, float],
                   canvas_outputs: tuple[np.ndarray, np.ndarray],
                   fingerprint: Fingerprint) -> ReferenceData:
    """A reference file's contents from a PyTorch run (the as-trained evaluation and
    PyTorch FP32 on the canvas)."""

    header = {"name": reference["name"], "accuracy": reference["accuracy"],
              "protocol": reference["protocol"], "eval_images": reference["eval_images"],
              "training_resize": reference.get("training_resize"),
              "canvas_accuracy": dict(canvas_accuracy), "fingerprint": asdict(fingerprint)}
    logits, boxes = canvas_outputs
    return ReferenceData(header=header, logits=logits.astype(np.float32),
                         boxes=boxes.astype(np.float32),
                         detections=detections_arrays(detections))
