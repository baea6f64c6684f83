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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.atomic import atomic_write_bytes
from runtime.errors import BackendUnavailableError, InputError

if TYPE_CHECKING:
    import tensorrt as trt


def read_cache(path: str | os.PathLike[str] | None) -> bytes | None:
    """Bytes of an existing, non-empty calibration cache, else ``None``."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    data = p.read_bytes()
    return data or None  # an empty file (interrupted older write) means "recalibrate"


def write_cache(path: str | os.PathLike[str] | None, data: bytes) -> None:
    """Write the calibration cache atomically (no-op without a path)."""
    if path is not None:
        atomic_write_bytes(path, bytes(data))


class BatchStream:
    """Host side of the calibrator: yields fixed-size feeds, counts batches.

    ``feeds`` yields ``{input name: array}`` with the same shapes each time
    (see ``export.calib_data.fixed_size_batches``).
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


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendUnavailableError(
                f"cuda-python not installed ({exc}); INT8 calibration needs it "
                "(pip install 'detr-edge[trt]')") from exc
    return cudart


def _check(result: tuple[Any, ...], what: str) -> Any:
    """cuda-python calls return ``(error, *values)``; raise on a non-zero error."""
    err = result[0]
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA {what} failed: {err}")
    return result[1] if len(result) > 1 else None


def make_entropy_calibrator(stream: BatchStream,
                            cache_path: str | os.PathLike[str] | None
                            ) -> trt.IInt8EntropyCalibrator2:
    """An ``IInt8EntropyCalibrator2`` feeding ``stream`` and using ``cache_path``.

    Raises ``BackendUnavailableError`` on TensorRT 11 (no calibrators) or when
    TensorRT / cuda-python are missing.
    """
    from export.trt_compat import import_tensorrt

    import_tensorrt()  # a clear error when only the stubs are installed
    import tensorrt as trt

    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} has no INT8 calibrator (removed in TensorRT 11); "
            "make an INT8 Q/DQ ONNX with 'detr-edge quantize' instead")
    cudart = _cudart()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device: dict[str, int] = {}  # input name -> device pointer

        def get_batch_size(self) -> int:
            return stream.batch_size

        def get_batch(self, names: list[str]) -> list[int]:
            feed = stream.next()
            if feed is None:
                return []  # an empty list tells TensorRT calibration is over
            pointers = []
            for name in names:
                if name not in feed:
                    raise InputError("calibration data", f"no data for network input {name!r}")
                host = np.ascontiguousarray(feed[name])
                if name not in self.device:
                    self.device[name] = int(_check(cudart.cudaMalloc(host.nbytes), "malloc"))
                _check(cudart.cudaMemcpy(self.device[name], host.ctypes.data, host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
                       "memcpy")
                pointers.append(self.device[name])
            return pointers

        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override]
            # The stubs type the return as Buffer; returning None (no cache) is
            # what TensorRT expects to trigger calibration.
            return read_cache(cache_path)

        def write_calibration_cache(self, cache: Any) -> None:
            write_cache(cache_path, bytes(cache))

        def free(self) -> None:
            for pointer in self.device.values():
                cudart.cudaFree(pointer)
            self.device.clear()

    return EntropyCalibrator()
