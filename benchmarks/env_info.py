"""Where a benchmark ran: CPU/GPU model, core count, library versions.

Recorded in every report so that figures from different machines are never
compared blindly. Every probe is best effort: a missing library is recorded
as ``None`` (not installed), never an exception.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.cpu_features import int8_dot_product_safe
from runtime.errors import DetrEdgeError

# Libraries whose versions change the numbers (kernels, graph optimisations).
_LIBRARIES = ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "tensorrt", "pycocotools",
              "PIL", "matplotlib")


@dataclass(frozen=True)
class EnvInfo:
    """A snapshot of the machine and software a benchmark ran on."""

    cpu_model: str  # from /proc/cpuinfo (or platform.processor())
    cpu_cores: int  # logical cores visible to this process (sched_getaffinity)
    omp_num_threads: str | None  # OMP_NUM_THREADS as set (None = library default)
    torch_threads: int | None  # torch.get_num_threads() if torch is installed
    gpu: str | None  # CUDA device name, None when torch sees no CUDA GPU
    python: str
    platform: str
    libraries: dict[str, str | None] = field(default_factory=dict)  # name -> version / None
    onnxruntime_providers: list[str] = field(default_factory=list)
    # False on AVX2 CPUs without VNNI, where ORT's int8 kernels saturate with 8-bit
    # weights (runtime.cpu_features): INT8 rows measured there are not comparable.
    int8_dot_product: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    """Version of an importable library, None when it is absent or only type stubs
    (``tensorrt-stubs`` makes ``import tensorrt`` succeed as an empty namespace)."""
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken install counts as "not installed"
        return None
    version = getattr(module, "__version__", None)
    if version is None and getattr(module, "__file__", None) is not None:
        try:  # e.g. pycocotools has no __version__ but its distribution has one
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return None if version is None else str(version)


def _gpu_without_torch() -> str | None:
    """Name of CUDA device 0 via cuda-python (TensorRT's runtime), or None."""
    from runtime.backends.tensorrt_backend import device_info, tensorrt_available

    try:
        return device_info()[0] if tensorrt_available() is None else None
    except (DetrEdgeError, ImportError, RuntimeError):
        return None


def collect_env_info() -> EnvInfo:
    """Probe the current process's environment (imports torch/onnxruntime if present)."""
    libraries = {name: _version(name) for name in _LIBRARIES}
    gpu = None
    torch_threads = None
    if libraries["torch"] is not None:
        import torch

        torch_threads = torch.get_num_threads()
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    else:  # a device without torch (Jetson): ask CUDA through cuda-python
        gpu = _gpu_without_torch()
    providers: list[str] = []
    if libraries["onnxruntime"] is not None:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return EnvInfo(
        cpu_model=_cpu_model(),
        cpu_cores=cores,
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        torch_threads=torch_threads,
        gpu=gpu,
        python=platform.python_version(),
        platform=platform.platform(),
        libraries=libraries,
        onnxruntime_providers=providers,
        int8_dot_product=int8_dot_product_safe(),
    )
