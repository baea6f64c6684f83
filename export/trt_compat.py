"""TensorRT version detection and the features each major version offers.

TensorRT 10 (JetPack 6 on Jetson) still has the implicit-quantization path:
``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` and ``IInt8EntropyCalibrator2``
(deprecated since 10.1 in favour of explicit Q/DQ). TensorRT 11 removed them:
precision must come from the ONNX graph (FP16 weights or Q/DQ nodes) in a
strongly typed network. The decision is a pure function of the version string
so it is unit-tested without the library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from export.engine_checks import resolve_precision
from runtime.backends.trt_import import import_tensorrt
from runtime.engine_file import version_numbers
from runtime.errors import BackendUnavailableError, InputError

MIN_MAJOR = 10  # strongly typed networks and the v3 execution API need TensorRT >= 10


@dataclass(frozen=True)
class TrtFeatures:
    """What the installed TensorRT can do, derived from its version only."""

    version: str  # e.g. "10.13.0.35"
    major: int
    minor: int
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED exists (>= 10.0)
    precision_flags: bool  # BuilderFlag.FP16/INT8 exist (10.x only, gone in 11)
    int8_calibrator: bool  # IInt8EntropyCalibrator2 exists (10.x only, gone in 11)


def parse_version(version: str) -> tuple[int, int]:
    """``"10.13.0.35"`` -> ``(10, 13)``; ``InputError`` for anything unparsable."""
    if not re.match(r"^\s*\d+\.\d+", version):
        raise InputError("tensorrt.__version__", f"cannot parse TensorRT version {version!r}")
    major, minor = version_numbers(version)[:2]
    return major, minor


def features_for(version: str) -> TrtFeatures:
    """Feature flags of TensorRT ``version``; ``BackendUnavailableError`` below 10."""
    major, minor = parse_version(version)
    if major < MIN_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: detr-edge needs TensorRT >= {MIN_MAJOR} "
            "(JetPack 6 or newer on Jetson)")
    legacy = major == 10
    return TrtFeatures(version=version, major=major, minor=minor, strongly_typed=True,
                       precision_flags=legacy, int8_calibrator=legacy)


def check_precision_request(precision: str, onnx_precision: str, features: TrtFeatures) -> str:
    """Decide how the engine gets its precision; returns ``"strongly_typed"`` or
    ``"builder_flags"``.

    ``precision`` is what the user asked for (fp32|fp16|int8), ``onnx_precision``
    what the ONNX model already is (ModelMeta.precision). A reduced-precision
    ONNX (FP16 weights or INT8 Q/DQ) always builds strongly typed in the graph's
    own precision; asking for any other precision on it (fp32 included) is
    refused (``export.engine_checks.resolve_precision``). A plain FP32 ONNX with
    ``--precision fp16|int8`` needs the TensorRT 10 builder flags.
    """
    resolve_precision(precision, onnx_precision)
    if onnx_precision != "fp32":
        return "strongly_typed"
    if precision == "fp32":
        return "strongly_typed"
    if not features.precision_flags:
        hint = ("detr-edge export-onnx --precision fp16" if precision == "fp16"
                else "detr-edge quantize (INT8 Q/DQ ONNX)")
        raise InputError("--precision", f"TensorRT {features.version} has no "
                         f"BuilderFlag.{precision.upper()}"
                         f"{' or INT8 calibrator' if precision == 'int8' else ''} "
                         f"(removed in TensorRT 11); make a {precision} ONNX with "
                         f"'{hint}' and build it without --precision")
    return "builder_flags"


def installed_features() -> TrtFeatures:
    """Features of the installed TensorRT; ``BackendUnavailableError`` if absent."""
    return features_for(import_tensorrt().__version__)
