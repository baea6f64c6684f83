"""The detr-edge engine file: a TensorRT plan plus the metadata needed to use it.

Layout (all written at once, atomically)::

    b"DETREDGE"                      8 bytes, magic
    header length                    uint32 little-endian
    header                           UTF-8 JSON object: every ModelMeta field
                                     + tensorrt_version, gpu_name,
                                     compute_capability, built_with,
                                     plan_bytes, plan_sha256
    plan                             the serialized TensorRT engine

A bare ``.plan`` carries no input size, normalisation or class names and only
fails deep inside TensorRT when the version or GPU differs. The header lets the
runtime preprocess/decode without the ONNX file and lets :func:`check_compatible`
refuse a mismatched engine with a readable message *before* deserialising.
``plan_bytes`` / ``plan_sha256`` catch truncated or corrupted copies (common
when engines are scp'd to a Jetson).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from runtime import json_limits
from runtime.atomic import atomic_write
from runtime.errors import InputError, ModelFormatError
from runtime.files import open_regular
from runtime.metadata import ModelMeta

MAGIC = b"DETREDGE"
_LEN = struct.Struct("<I")  # uint32 little-endian header length
PREFIX_BYTES = len(MAGIC) + _LEN.size
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a header is a few kB; larger means a corrupt length

# Header keys that are not ModelMeta fields.
# (built major, runtime major) pairs a version-compatible plan may cross (TensorRT 11.x
# support matrix: "TensorRT 10 version-compatible engines can run with a TensorRT 11
# runtime, and TensorRT 8 version-compatible engines can run with a TensorRT 10 runtime").
_CROSS_MAJOR = {(8, 10), (10, 11)}

_ENGINE_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "built_with",
                "plan_bytes", "plan_sha256")


@dataclass(frozen=True)
class EngineHeader:
    """The JSON header of an engine file."""

    meta: ModelMeta  # the model contract (input size, classes, normalisation, ...)
    tensorrt_version: str  # e.g. "10.13.0.35"; plans only load on the same version
    gpu_name: str  # e.g. "NVIDIA H100 80GB HBM3", "Orin"
    compute_capability: str  # "major.minor", e.g. "9.0", "8.7"
    built_with: dict[str, Any] = field(default_factory=dict)  # builder settings / provenance
    plan_bytes: int = 0  # length of the plan that follows the header
    plan_sha256: str = ""  # hex digest of the plan

    def to_json(self) -> str:
        doc = dataclasses.asdict(self.meta)
        for key in _ENGINE_KEYS:
            doc[key] = getattr(self, key)
        return json.dumps(doc, sort_keys=True)


def is_engine_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` starts with the detr-edge engine magic."""
    try:
        with open_regular(path, error=InputError) as fh:  # a FIFO would block open()
            return fh.read(len(MAGIC)) == MAGIC
    except (OSError, InputError):
        return False


def write_engine_file(path: str | os.PathLike[str], meta: ModelMeta, plan: bytes, *,
                      tensorrt_version: str, gpu_name: str, compute_capability: str,
                      built_with: dict[str, Any] | None = None) -> EngineHeader:
    """Write ``plan`` with its header to ``path`` atomically; return the header."""
    if not plan:
        raise InputError(path, "refusing to write an engine file with an empty plan")
    header = EngineHeader(
        meta=meta, tensorrt_version=str(tensorrt_version), gpu_name=str(gpu_name),
        compute_capability=str(compute_capability), built_with=dict(built_with or {}),
        plan_bytes=len(plan), plan_sha256=hashlib.sha256(plan).hexdigest())
    data = header.to_json().encode("utf-8")
    with atomic_write(path, "wb") as fh:
        fh.write(MAGIC)
        fh.write(_LEN.pack(len(data)))
        fh.write(data)
        fh.write(plan)
    return header


def read_engine_header(path: str | os.PathLike[str]) -> EngineHeader:
    """Read and validate only the header (cheap: does not read the plan)."""
    with _open(path) as fh:
        return _read_header(fh, path)


def read_engine_file(path: str | os.PathLike[str], *, verify: bool = True
                     ) -> tuple[EngineHeader, bytes]:
    """Return ``(header, plan)``; with ``verify`` the plan's length and SHA-256 are checked."""
    with _open(path) as fh:
        header = _read_header(fh, path)
        plan = fh.read()
    if len(plan) != header.plan_bytes:
        raise ModelFormatError(path, f"engine file is truncated or has trailing data: plan is "
                               f"{len(plan)} bytes, header says {header.plan_bytes}")
    if verify and hashlib.sha256(plan).hexdigest() != header.plan_sha256:
        raise ModelFormatError(path, "engine plan is corrupted (SHA-256 does not match header)")
    return header, plan


def version_problem(built: str, runtime: str, version_compatible: bool) -> str | None:
    """Why a plan built with TensorRT ``built`` cannot run on TensorRT ``runtime``, or None.

    NVIDIA's rules (TensorRT "Engine Compatibility: Version Compatibility" and
    the 11.x support matrix, "Engine Portability"):
    - by default a plan runs only on the TensorRT version that built it (the
      4th field, the build number, does not count);
    - a plan built with ``BuilderFlag.VERSION_COMPATIBLE`` (TensorRT >= 8.6)
      also runs on *later* runtimes of the same major version, and across
      majors only 8 -> 10 and 10 -> 11; never on an older runtime.
    """
    b, r = version_numbers(built)[:3], version_numbers(runtime)[:3]
    if not version_compatible:
        if b != r:
            return f"built with TensorRT {built}, this is TensorRT {runtime}"
        return None
    if b[:2] < (8, 6):
        return f"built with TensorRT {built}; version compatibility needs >= 8.6"
    if r < b:
        return (f"built with TensorRT {built} (version-compatible: runs on that version or "
                f"later), this is the older TensorRT {runtime}")
    if b[0] != r[0] and (b[0], r[0]) not in _CROSS_MAJOR:
        return (f"built with TensorRT {built} (version-compatible), this is TensorRT "
                f"{runtime}: across major versions only 8 -> 10 and 10 -> 11 are supported")
    return None


def check_compatible(header: EngineHeader, trt_version: str, gpu_name: str, cc: str,
                     source: str | os.PathLike[str] = "<engine>") -> None:
    """Raise ``ModelFormatError`` unless the engine can run with this TensorRT and GPU.

    The TensorRT version rule is :func:`version_problem` (``built_with``
    ``version_compatible`` relaxes it). Plans are tied to the GPU they were
    built on; ``hardware_compatibility`` (e.g. "ampere_plus") accepts another
    GPU of compute capability >= 8.0. A header whose GPU is "unknown" (built
    without cuda-python) skips the GPU check.
    """
    problems = []
    version = version_problem(header.tensorrt_version, trt_version,
                              bool(header.built_with.get("version_compatible")))
    if version:
        problems.append(version)
    hw = str(header.built_with.get("hardware_compatibility", "none")).lower()
    if header.compute_capability.strip().lower() in ("", "unknown"):
        pass  # the builder could not query its GPU; TensorRT itself rejects a wrong plan
    elif hw in ("ampere_plus", "ampere+"):
        if _cc_key(cc) < (8, 0):
            problems.append(f"built hardware-compatible for Ampere+ (compute capability >= 8.0), "
                            f"this GPU {gpu_name} is {cc}")
    elif _cc_key(header.compute_capability) != _cc_key(cc):
        problems.append(f"built for compute capability {header.compute_capability} "
                        f"({header.gpu_name}), this GPU {gpu_name} is {cc}")
    elif header.gpu_name.strip() != gpu_name.strip():
        problems.append(f"built on {header.gpu_name}, this GPU is {gpu_name} "
                        f"(TensorRT plans are specific to the GPU model)")
    if problems:
        raise ModelFormatError(source, "engine is not compatible: " + "; ".join(problems)
                               + ". Rebuild it on this machine with `detr-edge build-engine`.")


def version_numbers(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``, at least 3 numbers; the digits of each
    dot-separated piece (none = 0). TensorRT versions and compute capabilities ("8.7")."""
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) + (0,) * max(0, 3 - len(parts))


def _cc_key(cc: str) -> tuple[int, int]:
    key = version_numbers(cc)
    return key[0], key[1]


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    p = Path(path)
    if not p.exists():
        raise InputError(p, "engine file not found")
    if p.is_dir():
        raise InputError(p, "is a directory, not an engine file")
    return open_regular(p, error=InputError)


def _read_header(fh: BinaryIO, path: str | os.PathLike[str]) -> EngineHeader:
    prefix = fh.read(PREFIX_BYTES)
    if len(prefix) < len(MAGIC) or prefix[:len(MAGIC)] != MAGIC:
        raise ModelFormatError(path, "not a detr-edge engine file (missing DETREDGE magic); "
                               "build one with `detr-edge build-engine`")
    if len(prefix) < PREFIX_BYTES:
        raise ModelFormatError(path, "engine file is truncated (no header length)")
    (length,) = _LEN.unpack(prefix[len(MAGIC):])
    if length == 0 or length > MAX_HEADER_BYTES:
        raise ModelFormatError(path, f"engine header length {length} is implausible (corrupt file)")
    raw = fh.read(length)
    if len(raw) != length:
        raise ModelFormatError(path, f"engine file is truncated (header is {len(raw)} of "
                               f"{length} bytes)")
    doc = json_limits.loads(raw, path, what="engine header", error=ModelFormatError)
    if not isinstance(doc, dict):
        raise ModelFormatError(path, "engine header must be a JSON object")
    missing = [k for k in _ENGINE_KEYS if k not in doc]
    if missing:
        raise ModelFormatError(path, f"engine header lacks {missing}")
    engine = {k: doc.pop(k) for k in _ENGINE_KEYS}
    meta = ModelMeta.from_json(json.dumps(doc), source=str(path))
    if not isinstance(engine["built_with"], dict) or not isinstance(engine["plan_bytes"], int):
        raise ModelFormatError(path, "engine header fields built_with/plan_bytes are malformed")
    return EngineHeader(meta=meta, tensorrt_version=str(engine["tensorrt_version"]),
                        gpu_name=str(engine["gpu_name"]),
                        compute_capability=str(engine["compute_capability"]),
                        built_with=engine["built_with"], plan_bytes=engine["plan_bytes"],
                        plan_sha256=str(engine["plan_sha256"]))
