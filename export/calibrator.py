"""TensorRT 10 implicit INT8 calibration (``IInt8EntropyCalibrator2``) with a cache.

Only for building a plain FP32 ONNX as INT8 on TensorRT 10.x (JetPack 6);
TensorRT 11 removed calibrators (use ``detr-edge quantize`` for a Q/DQ ONNX).
The calibration cache (TensorRT's own text format of per-tensor scales) is
written atomically after calibration and read back on the next build, so a
rebuild with the same cache skips the calibration pass entirely.

Device memory comes from cuda-python (``cuda.bindings.runtime``, the ``trt``
extra); one buffer per input is allocated once and reused for every batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from export.engine_checks import read_cache_file, write_cache_file
from runtime.backends.trt_import import cuda_call, import_cudart, import_tensorrt
from runtime.errors import BackendUnavailableError, InputError

if TYPE_CHECKING:
    import tensorrt as trt

_T = TypeVar("_T")


def read_cache(path: str | os.PathLike[str] | None) -> bytes | None:
    """Bytes of an existing, non-empty calibration cache, else ``None``."""
    # An empty file (interrupted older write) means "recalibrate".
    return read_cache_file(path) or None


class BatchStream:
    """Host side of the calibrator: yields fixed-size feeds, counts batches.

    ``feeds`` yields ``{input name: array}`` with the same shapes each time
    (see ``export.int8.calib_data.fixed_size_batches``).
    """

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]], batch_size: int) -> None:
        if batch_size <= 0:
            raise InputError("calibration batch size", f"must be positive, got {batch_size}")
        self.batch_size = batch_size
        self._feeds = feeds
        self.batches_seen = 0

    def next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or ``None`` when calibration data is exhausted."""
        feed = next(self._feeds, None)
        if feed is None:
            return None
        for name, array in feed.items():
            if array.shape[0] != self.batch_size:
                raise InputError("calibration data", f"input {name!r} batch has "
                                 f"{array.shape[0]} images, expected {self.batch_size}")
        self.batches_seen += 1
        return feed


class CalibrationSession:
    """The Python side of a TensorRT calibrator, with no TensorRT in it.

    TensorRT's Python binding catches any exception raised in ``get_batch``,
    prints it and returns false, which TensorRT reads as "no more batches"
    (``getBatch`` in python/src/infer/pyInt8.cpp, TensorRT 10.x): a bad image
    or a CUDA error would silently end calibration and the build would still
    succeed with scales from part of the data. So every callback goes through
    :meth:`guard`, which keeps the first exception; the builder calls
    :meth:`raise_if_failed` after ``build_serialized_network`` and a failed
    calibration never writes its cache.
    """

    def __init__(self, stream: BatchStream, cache_path: str | os.PathLike[str] | None) -> None:
        self.stream = stream
        self.cache_path = cache_path
        self.error: BaseException | None = None

    def guard(self, fn: Callable[[], _T], default: _T) -> _T:
        """``fn()``, or ``default`` after remembering its exception (Ctrl-C included)."""
        if self.error is not None:
            return default  # already failed: end calibration at once
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - kept, re-raised after the build
            self.error = exc
            return default

    def next_feed(self, names: Sequence[str]) -> dict[str, np.ndarray] | None:
        """Host arrays for the network inputs ``names``; None when the data is exhausted."""
        feed = self.stream.next()
        if feed is None:
            return None
        missing = [n for n in names if n not in feed]
        if missing:
            raise InputError("calibration data", f"no data for network input(s) {missing}")
        return {n: np.ascontiguousarray(feed[n]) for n in names}

    def read_cache(self) -> bytes | None:
        return read_cache(self.cache_path)

    def write_cache(self, data: bytes) -> None:
        if self.error is None:  # scales from a calibration that failed part-way are wrong
            write_cache_file(self.cache_path, data)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


def make_entropy_calibrator(session: CalibrationSession) -> trt.IInt8EntropyCalibrator2:
    """An ``IInt8EntropyCalibrator2`` feeding ``session`` (its stream and cache).

    Raises ``BackendUnavailableError`` on TensorRT 11 (no calibrators) or when
    TensorRT / cuda-python are missing.
    """
    import_tensorrt()  # a clear error when only the stubs are installed
    import tensorrt as trt

    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} has no INT8 calibrator (removed in TensorRT 11); "
            "make an INT8 Q/DQ ONNX with 'detr-edge quantize' instead")
    cudart = import_cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device: dict[str, int] = {}  # input name -> device pointer

        def get_batch_size(self) -> int:
            return session.stream.batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            # An empty list tells TensorRT calibration is over (also after an error).
            return session.guard(lambda: self._upload(names), [])

        def _upload(self, names: list[str]) -> list[int]:
            feed = session.next_feed(names)
            if feed is None:
                return []
            pointers = []
            for name in names:
                host = feed[name]
                if name not in self.device:
                    self.device[name] = int(cuda_call(cudart.cudaMalloc(host.nbytes), "cudaMalloc"))
                cuda_call(cudart.cudaMemcpy(self.device[name], host.ctypes.data, host.nbytes,
                                            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
                          "cudaMemcpy")
                pointers.append(self.device[name])
            return pointers

        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override]
            # The stubs type the return as Buffer; returning None (no cache) is
            # what TensorRT expects to trigger calibration.
            return session.guard(session.read_cache, None)

        def write_calibration_cache(self, cache: Any) -> None:
            session.guard(lambda: session.write_cache(bytes(cache)), None)

        def free(self) -> None:
            for pointer in self.device.values():
                cudart.cudaFree(pointer)
            self.device.clear()

    return EntropyCalibrator()
