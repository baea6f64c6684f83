"""``Detector``: an exported DETR (ONNX model or engine file) as a callable detector.

    det = Detector("model.onnx")              # or "model.engine"
    results = det.detect(["a.jpg", pil_image, numpy_array])
    results[0].boxes        # float32 [N, 4] xyxy in original pixels, clipped
    results[0].class_names  # ["cat", ...]; results[0].category_ids: dataset ids

Preprocessing (``runtime.preprocess``) and decoding (``runtime.decode``) are the
shared implementations, so detections equal what evaluation and benchmarks see.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Backend, check_outputs, pad_batch
from runtime.decode import Detections, decode_images
from runtime.engine_file import is_engine_file
from runtime.errors import InputError
from runtime.fused import fused_source_size, stack_frames
from runtime.image_io import ImageSource, load_image
from runtime.metadata import ModelMeta
from runtime.preprocess import Batch, preprocess

DEFAULT_DYNAMIC_BATCH = 8  # images per inference call for a dynamic-batch model
BACKENDS = ("auto", "onnxruntime", "tensorrt")


def open_backend(path: str | os.PathLike[str], backend: str = "auto",
                 providers: Any = None, **options: Any) -> Backend:
    """Create the backend for ``path``: 'auto' = native TensorRT for a detr-edge engine
    file, ONNX Runtime for anything else (``providers`` picks its execution providers)."""
    if backend not in BACKENDS:
        raise InputError("backend", f"unknown backend {backend!r} (choose from {BACKENDS})")
    p = Path(path)
    if not p.exists():
        raise InputError(p, "model file not found")
    engine = is_engine_file(p)
    if backend == "tensorrt" or (backend == "auto" and engine):
        if not engine:
            raise InputError(p, "the native TensorRT backend needs a detr-edge engine file "
                             "(detr-edge build-engine); for an ONNX model use backend "
                             "'onnxruntime' with providers=['tensorrt']")
        from runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(p, **options)
    if engine:
        raise InputError(p, "this is a TensorRT engine file; use backend 'tensorrt' or 'auto'")
    from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(p, providers=providers, **options)


class Detector:
    """Detect objects with an exported detr-edge model.

    path: ONNX model (with detr-edge metadata) or detr-edge engine file.
    backend: 'auto' | 'onnxruntime' | 'tensorrt'. providers: ONNX Runtime
    execution providers ('auto', names, aliases "cpu"/"cuda"/"tensorrt").
    batch_size: images per inference call for a dynamic-batch model (a fixed
    batch model always uses its own batch). Extra keyword ``backend_options``
    go to the backend (e.g. ``cuda_graph=True`` for TensorRT).
    """

    def __init__(self, path: str | os.PathLike[str], backend: str = "auto",
                 providers: Any = None, batch_size: int | None = None,
                 backend_options: dict[str, Any] | None = None) -> None:
        self.backend = open_backend(path, backend, providers, **(backend_options or {}))
        self.meta: ModelMeta = self.backend.meta
        fixed = self.backend.batch_size
        if batch_size is not None and batch_size <= 0:
            raise InputError("batch_size", f"must be positive, got {batch_size}")
        if fixed is not None and batch_size is not None and batch_size != fixed:
            raise InputError("batch_size", f"the model has a fixed batch size of {fixed}; "
                             f"re-export with a dynamic batch to use {batch_size}")
        limit = self.backend.max_batch_size
        chosen = fixed or batch_size or DEFAULT_DYNAMIC_BATCH
        self.batch_size = min(chosen, limit) if limit else chosen
        self.fused_source = fused_source_size(self.meta)  # (Hs, Ws) of a fused model's frames

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):  # returns self (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- model only ---------------------------------------------------------------------

    def infer(self, batch_images: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Run the model alone. batch_images float32 [B,3,H,W] preprocessed (B = the fixed
        batch for a fixed-batch model); mask bool [B,H,W] True = padding (only used by
        models with a mask input). Returns raw logits [B,Q,K+1], boxes [B,Q,4] cxcywh."""
        return self.backend.infer(batch_images, mask)

    # ---- end to end ---------------------------------------------------------------------

    def detect(self, images: ImageSource | Sequence[ImageSource] | Batch, *,
               score_threshold: float | None = None, top_k: int | None = None,
               second_best: bool | None = None) -> list[Detections]:
        """Detect objects in one or more images.

        images: paths / PIL images / numpy ``[H,W(,C)]`` images of any size, a
        ``Batch`` from ``preprocess``, or a float ``[B,3,H,W]`` array already
        preprocessed to the model's canvas (its boxes are then in canvas pixels).
        Decoding options default to the model's ``meta.decoding``.
        Returns one ``Detections`` per image: boxes xyxy in original pixels,
        clipped to the image, with ``class_names`` and ``category_ids``.
        """
        defaults = self.meta.decoding
        options = {
            "score_threshold": defaults.score_threshold if score_threshold is None
            else score_threshold,
            "top_k": defaults.top_k if top_k is None else top_k,
            "second_best": defaults.second_best if second_best is None else second_best}
        results: list[Detections] = []
        for batch in self._batches(images):
            results.extend(self._detect_batch(batch, **options))
        return results

    def _batches(self, images: Any) -> Iterator[Batch]:
        if isinstance(images, Batch):
            for start in range(0, len(images), self.batch_size):
                yield images.slice(start, start + self.batch_size)
            return
        if isinstance(images, np.ndarray) and images.ndim == 4:
            yield from self._batches(self._as_batch(images))
            return
        single = isinstance(images, (str, np.ndarray)) or hasattr(images, "__fspath__") \
            or hasattr(images, "getbands")  # PIL image
        sources = [images] if single else list(images)
        for start in range(0, len(sources), self.batch_size):
            yield self.prepare(sources[start:start + self.batch_size])

    def prepare(self, sources: Sequence[ImageSource]) -> Batch:
        """The model's input Batch for ``sources``: ``runtime.preprocess`` for a float-input
        model; the frames stacked as uint8 [B, Hs, Ws, 3] for a ``--fused-preprocess`` one."""
        if self.fused_source is None:
            return preprocess(sources, self.meta)
        return stack_frames([s if isinstance(s, np.ndarray) and _is_rgb_frame(s)
                             else np.asarray(load_image(s)) for s in sources], self.meta)

    def _as_batch(self, array: np.ndarray) -> Batch:
        """A user-preprocessed [B,3,H,W] float array -> Batch (no padding, scale 1)."""
        H, W = self.meta.input_height, self.meta.input_width  # canvas
        if array.shape[1:] != (3, H, W) or not np.issubdtype(array.dtype, np.floating):
            raise InputError("images", f"preprocessed array has shape {tuple(array.shape)} "
                             f"and dtype {array.dtype}; the model expects float [B, 3, {H}, {W}] "
                             "(pass raw images to have them resized)")
        B = array.shape[0]
        sizes = np.tile(np.array([[H, W]], dtype=np.int64), (B, 1))
        return Batch(images=np.ascontiguousarray(array, dtype=np.float32),
                     mask=np.zeros((B, H, W), dtype=bool), scales=np.ones((B,)),
                     valid_sizes=sizes, orig_sizes=sizes.copy())

    def _detect_batch(self, batch: Batch, **options: Any) -> list[Detections]:
        logits, boxes = self.infer_batch(batch)
        return self.decode_batch(batch, logits, boxes, **options)

    def infer_batch(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """The model on a Batch of at most ``batch_size`` images -> raw (logits [n,Q,K+1],
        boxes [n,Q,4] cxcywh); a fixed-batch model's partial batch is padded and cut."""
        n = len(batch)
        images = batch.images
        mask: np.ndarray | None = batch.mask
        fixed = self.backend.batch_size
        if fixed is not None and n < fixed:
            # The last partial batch: its padding images' outputs are dropped below.
            images, mask = pad_batch(images, mask, fixed)
        logits, boxes = self.backend.infer(images, mask)
        check_outputs(self.meta, logits, boxes, len(images), getattr(self.backend, "path", "model"))
        return logits[:n], boxes[:n]

    def decode_batch(self, batch: Batch, logits: np.ndarray, boxes: np.ndarray,
                     **options: Any) -> list[Detections]:
        """Set decoding of ``infer_batch`` outputs: boxes xyxy in original pixels, clipped,
        with class names and category ids. ``options`` go to ``runtime.decode.decode``."""
        dets = decode_images(logits, boxes, batch, self.meta, **options)
        for det in dets:
            det.class_names = [self.meta.class_names[i] for i in det.labels]
            det.category_ids = np.asarray(self.meta.label_map, dtype=np.int64)[det.labels] \
                if len(det) else np.zeros((0,), dtype=np.int64)
        return dets


def _is_rgb_frame(src: Any) -> bool:
    """A uint8 [H, W, 3] array (a decoded video frame): used as is, no PIL round trip."""
    return isinstance(src, np.ndarray) and src.dtype == np.uint8 and src.ndim == 3 \
        and src.shape[2] == 3
