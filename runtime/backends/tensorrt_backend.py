"""Native TensorRT backend (TensorRT 10/11 Python API + cuda-python).

Runs a detr-edge engine file (``runtime/engine_file.py``): the header is
checked against this TensorRT version and GPU before the plan is
deserialised, so a mismatch is a readable ``ModelFormatError`` instead of a
TensorRT assertion. I/O uses the name-based API of TensorRT >= 10
(``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3``; the old
binding-index API is gone in 10). Host buffers are pinned
(``cudaMallocHost``) so the copies are truly asynchronous; device buffers are
allocated once for the largest batch. With ``cuda_graph=True`` the enqueue
of each batch size is captured once into a CUDA graph and replayed, which
removes most of the per-launch CPU overhead on Jetson-class CPUs. Each
captured batch size has its own execution context: a graph replays the
context's shapes and internal buffers as they were at capture, so one context
re-shaped for another batch would invalidate the graphs captured before. An
engine whose enqueue cannot be captured runs without a graph, with a warning
(what trtexec ``--useCudaGraph`` does).

Inputs follow the engine (``runtime/backends/tensorrt_io.py``): float canvases
``[B, 3, H, W]`` for a plain export, uint8 frames ``[B, Hs, Ws, 3]`` for one
exported with ``--fused-preprocess`` (the engine preprocesses on the GPU; ``infer``
then only copies the frame bytes).

tensorrt and cuda-python are imported inside :func:`_import_trt`
(``runtime.backends.trt_import``); without them ``BackendUnavailableError`` says what
to install.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backends.base import Backend
from runtime.backends.model_io import TensorSpec
from runtime.backends.tensorrt_io import buffer_shape, plan_inputs, prepare_feed
from runtime.backends.trt_import import cuda_call, device_info, import_cudart, import_tensorrt
from runtime.engine_file import check_compatible, read_engine_file
from runtime.errors import BackendUnavailableError, DetrEdgeError, ModelFormatError

if TYPE_CHECKING:
    import tensorrt as trt


def _import_trt() -> tuple[Any, Any]:
    """Return ``(tensorrt, cudart)`` or raise ``BackendUnavailableError``."""
    return import_tensorrt(), import_cudart()


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    """TensorRT ``Dims`` -> tuple (the stubs declare no ``__iter__``)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def tensorrt_available() -> str | None:
    """None when the native backend can be used (TensorRT, cuda-python and a CUDA
    device), else the reason it cannot. No torch involved."""
    try:
        _, cudart = _import_trt()
    except BackendUnavailableError as exc:
        return str(exc)
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or int(count) == 0:
        return f"no CUDA GPU ({'cudaGetDeviceCount: ' + repr(err) if int(err) else 'none found'})"
    return None


@dataclass
class _Tensor:
    """One engine I/O tensor with its pinned host and device buffers (sized for max batch)."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # engine shape; -1 = dynamic
    host_ptr: int = 0
    device_ptr: int = 0
    nbytes: int = 0
    host: np.ndarray | None = None  # pinned numpy view of host_ptr, max-batch shape


class TensorRTBackend(Backend):
    """Native TensorRT execution of a detr-edge engine file.

    ``cuda_graph``: capture each batch size's enqueue into a CUDA graph.
    ``device``: CUDA device index. ``check``: refuse engines built with another
    TensorRT version or GPU (``check_compatible``).
    """

    def __init__(self, path: str | os.PathLike[str], *, cuda_graph: bool = False,
                 device: int = 0, check: bool = True) -> None:
        self._closed = False
        self._tensors: dict[str, _Tensor] = {}
        # batch -> (context, graph exec) for CUDA graphs; graph exec None = capture failed
        self._graphs: dict[int, tuple[trt.IExecutionContext, Any]] = {}
        self.path = Path(path)
        # The file is checked first: a truncated or corrupt engine is the same
        # error with or without TensorRT installed (and testable without a GPU).
        header, plan = read_engine_file(self.path)
        trt_mod, cudart = _import_trt()
        self._cudart = cudart
        self.meta = header.meta
        self.header = header
        cuda_call(cudart.cudaSetDevice(device), "cudaSetDevice")
        gpu_name, cc = device_info(device)
        if check:
            check_compatible(header, str(trt_mod.__version__), gpu_name, cc, source=self.path)
        self._logger = trt_mod.Logger(trt_mod.Logger.WARNING)
        self._runtime: trt.Runtime = trt_mod.Runtime(self._logger)
        if header.built_with.get("version_compatible"):
            # A version-compatible plan embeds a lean runtime (host code), which a
            # runtime refuses unless allowed ("Version Compatibility" in the TensorRT
            # developer guide); the header check above ran first.
            self._runtime.engine_host_code_allowed = True
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelFormatError(self.path, "TensorRT could not deserialize the plan "
                                   "(see the TensorRT log above)")
        self._engine: trt.ICudaEngine = engine
        context = engine.create_execution_context()
        if context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context "
                                          "(out of GPU memory?)")
        self._context: trt.IExecutionContext = context
        self._stream = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.cuda_graph = cuda_graph
        self.name = f"tensorrt[{gpu_name}{', cuda graph' if cuda_graph else ''}]"
        self._setup_io(trt_mod)

    # ---- set-up -------------------------------------------------------------------------

    def _setup_io(self, trt_mod: Any) -> None:
        engine = self._engine
        specs: dict[str, TensorSpec] = {}
        dtypes: dict[str, np.dtype[Any]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtypes[name] = np.dtype(trt_mod.nptype(engine.get_tensor_dtype(name)))
            specs[name] = TensorSpec(
                name=name,
                is_input=engine.get_tensor_mode(name) == trt_mod.TensorIOMode.INPUT,
                dtype=dtypes[name], shape=_dims(engine.get_tensor_shape(name)))
        profile = None
        if "images" in specs and specs["images"].shape[:1] == (-1,):
            min_shape, _, max_shape = engine.get_tensor_profile_shape("images", 0)
            profile = (int(min_shape[0]), int(max_shape[0]))
        # Layout (float canvases or uint8 frames of a fused model), dtypes and batch
        # range come from the engine itself, checked against the header.
        self.plan = plan = plan_inputs(self.meta, specs, profile, self.path)
        self.batch_size: int | None = plan.batch_size
        self.min_batch_size, self.max_batch_size = plan.min_batch, plan.max_batch
        self._tensors = {name: _Tensor(s.name, s.is_input, dtypes[name], s.shape)
                         for name, s in specs.items()}
        self._set_batch(self._context, plan.max_batch)
        for name, t in self._tensors.items():
            # The context's shapes at the max batch resolve the outputs' dynamic axes.
            full = buffer_shape(specs[name], _dims(self._context.get_tensor_shape(name)),
                                plan.max_batch, self.path)
            t.nbytes = int(np.prod(full)) * t.dtype.itemsize
            t.device_ptr = int(cuda_call(self._cudart.cudaMalloc(t.nbytes), "cudaMalloc"))
            t.host_ptr = int(cuda_call(self._cudart.cudaMallocHost(t.nbytes), "cudaMallocHost"))
            raw = (ctypes.c_uint8 * t.nbytes).from_address(t.host_ptr)
            t.host = np.frombuffer(memoryview(raw).cast("B"), dtype=t.dtype).reshape(full)
        self._bind(self._context)

    def _bind(self, context: trt.IExecutionContext) -> None:
        for t in self._tensors.values():
            if not context.set_tensor_address(t.name, t.device_ptr):
                raise BackendUnavailableError(f"TensorRT rejected the address of '{t.name}'")

    def _set_batch(self, context: trt.IExecutionContext, batch: int) -> None:
        for t in self._tensors.values():
            if t.is_input and t.shape[0] < 0 and not context.set_input_shape(
                    t.name, (batch, *t.shape[1:])):
                raise DetrEdgeError(f"TensorRT rejected batch size {batch} for '{t.name}'")

    # ---- inference ----------------------------------------------------------------------

    def infer(self, images: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        if self._closed:
            raise DetrEdgeError("TensorRT backend is closed")
        feed, n = prepare_feed(self.plan, self.meta, images, mask)
        B = feed["images"].shape[0]  # >= n: padded up to the profile minimum
        cudart = self._cudart
        for name, array in feed.items():
            t = self._tensors[name]
            assert t.host is not None
            t.host[:B] = array  # uint8 frames of a fused model: a plain byte copy
            cuda_call(cudart.cudaMemcpyAsync(t.device_ptr, t.host_ptr, t.nbytes // self._max * B,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                          self._stream), "cudaMemcpyAsync H2D")
        self._enqueue(B)
        outputs = {}
        for name in ("logits", "boxes"):
            t = self._tensors[name]
            cuda_call(cudart.cudaMemcpyAsync(t.host_ptr, t.device_ptr, t.nbytes // self._max * B,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                          self._stream), "cudaMemcpyAsync D2H")
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        for name in ("logits", "boxes"):
            host = self._tensors[name].host
            assert host is not None
            outputs[name] = np.array(host[:n], dtype=np.float32)  # copy out of pinned memory
        return outputs["logits"], outputs["boxes"]

    @property
    def _max(self) -> int:
        assert self.max_batch_size is not None
        return self.max_batch_size

    def _execute(self, context: trt.IExecutionContext) -> bool:
        return bool(context.execute_async_v3(int(self._stream)))

    def _enqueue(self, batch: int) -> None:
        if not self.cuda_graph:
            self._set_batch(self._context, batch)
            if not self._execute(self._context):
                raise DetrEdgeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            return
        if batch not in self._graphs:
            self._graphs[batch] = self._capture(batch)
        context, graph_exec = self._graphs[batch]
        if graph_exec is None:  # capture failed for this batch size: plain execution
            if not self._execute(context):
                raise DetrEdgeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            return
        cuda_call(self._cudart.cudaGraphLaunch(graph_exec, self._stream), "cudaGraphLaunch")

    def _capture(self, batch: int) -> tuple[trt.IExecutionContext, Any]:
        """A context of its own for ``batch`` and its CUDA graph (None if capture fails)."""
        cudart = self._cudart
        context = self._engine.create_execution_context()
        if context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context "
                                          "(out of GPU memory?)")
        self._set_batch(context, batch)
        self._bind(context)
        # One plain run first: TensorRT finishes shape-dependent set-up on the first
        # enqueue after set_input_shape, and that work must not be captured.
        if not self._execute(context):
            raise DetrEdgeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        cuda_call(cudart.cudaStreamBeginCapture(
            self._stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture")
        # The enqueue returns false when the engine has work that cannot be captured;
        # end the capture either way and clear the sticky error (trtexec's
        # TrtCudaGraph::endCaptureOnError, samples/common/sampleDevice.h).
        ok = self._execute(context)
        end_err, graph = cudart.cudaStreamEndCapture(self._stream)
        graph_exec = None
        if int(end_err) == 0:  # else the capture was invalidated and there is no graph
            if ok:
                err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
                graph_exec = graph_exec if int(err) == 0 else None
            cudart.cudaGraphDestroy(graph)  # the instantiated graph does not need it
        if graph_exec is None:
            cudart.cudaGetLastError()
            warnings.warn(f"{self.path}: CUDA graph capture failed for batch {batch}; "
                          "running it without a CUDA graph", RuntimeWarning, stacklevel=3)
        return context, graph_exec

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cudart = self._cudart
        for _context, graph_exec in self._graphs.values():
            if graph_exec is not None:
                cudart.cudaGraphExecDestroy(graph_exec)
        self._graphs.clear()  # drops the per-batch contexts before the engine
        for t in self._tensors.values():
            t.host = None
            if t.device_ptr:
                cudart.cudaFree(t.device_ptr)
            if t.host_ptr:
                cudart.cudaFreeHost(t.host_ptr)
            t.device_ptr = t.host_ptr = 0
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
        # Drop TensorRT objects in dependency order: context, engine, runtime.
        for attr in ("_context", "_engine", "_runtime"):
            self.__dict__.pop(attr, None)

    def __del__(self) -> None:
        # At interpreter shutdown cuda-python may already be torn down; nothing to report.
        with contextlib.suppress(Exception):
            self.close()
