"""The model metadata contract shared by the exporter, the engine builder and
the runtime.

An exported ONNX model stores one JSON document under the ``metadata_props``
key :data:`METADATA_KEY`; an engine file stores the same document (plus
TensorRT fields) in its header. The runtime needs nothing else to preprocess
inputs and decode outputs. The JSON is parsed as data only, never evaluated,
by the bounded reader ``runtime.json_limits`` (depth, number and size limits).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime import json_limits
from runtime.errors import ModelFormatError
from runtime.json_limits import is_finite_number, is_int

METADATA_KEY = "detr_edge"
FORMAT_VERSION = 1
MAX_METADATA_BYTES = 16 * 1024 * 1024  # a real document is a few kB (class names dominate)
# Canvas side limit: DETR's encoder attends over (H/32)*(W/32) tokens, so a 4096 px side
# is already ~16k tokens; larger canvases only end in the allocator.
MAX_CANVAS_SIDE = 4096
MAX_BATCH = 1024  # images per inference call
MIN_STD = 1e-6  # normalisation std below this makes pixels inf/NaN in float32
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DecodingDefaults:
    """How the runtime turns ``logits``/``boxes`` into detections by default."""

    score_threshold: float = 0.0  # keep every slot; COCO AP wants low-score boxes too
    top_k: int | None = None  # None = keep all queries that pass the threshold
    # False: slots whose top class is no-object are dropped (predict's default). AP is
    # always computed with True, the official PostProcess (eval, benchmark, quantize).
    second_best: bool = False


# The two INT8 Q/DQ formats ``detr-edge quantize --target`` writes (export.int8.qdq_insert):
# TensorRT's symmetric int8, and ONNX Runtime's uint8-activation cpu format.
INT8_FORMATS = ("tensorrt", "cpu")


@dataclass(frozen=True)
class ModelMeta:
    """Everything the runtime needs to know about an exported model.

    Box convention of the model outputs: ``boxes`` are normalised
    ``(cx, cy, w, h)`` in [0, 1]. Without a mask input they are relative to the
    whole padded input canvas ``(input_height, input_width)``; with a mask input
    (``with_mask``) they are relative to the valid (unpadded) region of each
    image, as in DETR training.
    """

    preset: str  # e.g. "detr-tiny", "detr-r50"
    input_height: int  # fixed input size the graph was exported for (pixels)
    input_width: int
    class_names: list[str]  # index = contiguous model label (no-object excluded)
    label_map: list[int]  # contiguous model label -> original dataset category id
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB normalisation (0..1 scale)
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int | None = 1  # None = dynamic batch axis
    with_mask: bool = False  # graph has a ``mask`` input [B,H,W], True = padding
    precision: str = "fp32"  # "fp32" | "fp16" | "int8" (decided at the ONNX level)
    # The training resize rule reproduced inside the canvas (runtime.preprocess.target_size):
    # shorter side resize_shorter, longer side <= resize_max. None (files written before
    # these fields existed, maskless exports) = fit the whole canvas.
    resize_shorter: int | None = None
    resize_max: int | None = None
    decoding: DecodingDefaults = field(default_factory=DecodingDefaults)
    exporter_version: str = ""  # detr-edge version that wrote the file
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance

    @property
    def num_classes(self) -> int:
        """Number of object classes K (the logits have K+1 columns)."""
        return len(self.class_names)

    @property
    def int8_format(self) -> str | None:
        """The Q/DQ format of an INT8 model (one of ``INT8_FORMATS``, from
        ``extra.int8.target``; "tensorrt" when the file predates the cpu format);
        None for FP32/FP16 models."""
        if self.precision != "int8":
            return None
        return str((self.extra.get("int8") or {}).get("target", "tensorrt"))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def replace(self, **changes: Any) -> ModelMeta:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> ModelMeta:
        """Parse and validate; raise ``ModelFormatError`` naming ``source``."""
        if not isinstance(text, (str, bytes)):
            raise ModelFormatError(source, "detr-edge metadata is not text")
        raw = json_limits.loads(text, source, what="detr-edge metadata", error=ModelFormatError,
                                max_bytes=MAX_METADATA_BYTES)
        if not isinstance(raw, dict):
            raise ModelFormatError(source, "detr-edge metadata must be a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFormatError(
                source, f"metadata format version {version!r} is not supported "
                f"(this detr-edge reads version {FORMAT_VERSION})")
        problem = _type_problem(raw)
        if problem:
            raise ModelFormatError(source, f"detr-edge metadata is malformed: {problem}")
        try:
            decoding = DecodingDefaults(**raw.pop("decoding", {}))
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = set(raw) - known
            if unknown:
                raise TypeError(f"unknown fields {sorted(unknown)}")
            meta = cls(decoding=decoding, **raw)
            if len(meta.mean) != 3 or len(meta.std) != 3:
                raise ValueError("mean/std must be 3 numbers")
            mean = (float(meta.mean[0]), float(meta.mean[1]), float(meta.mean[2]))
            std = (float(meta.std[0]), float(meta.std[1]), float(meta.std[2]))
            meta = dataclasses.replace(meta, mean=mean, std=std)
        except (TypeError, IndexError, ValueError) as exc:
            raise ModelFormatError(source, f"detr-edge metadata is malformed: {exc}") from exc
        meta.validate(source)
        return meta

    def validate(self, source: str = "<metadata>") -> None:
        """Raise ``ModelFormatError`` naming ``source`` for values the runtime cannot use."""
        problems = []
        if not (0 < self.input_height <= MAX_CANVAS_SIDE and 0 < self.input_width <= MAX_CANVAS_SIDE):
            problems.append(f"input size {self.input_height}x{self.input_width} is not within "
                            f"1..{MAX_CANVAS_SIDE} pixels per side")
        if not self.class_names:
            problems.append("no class names (the model needs at least one class)")
        if len(self.label_map) != len(self.class_names):
            problems.append(f"label_map has {len(self.label_map)} entries "
                            f"but there are {len(self.class_names)} classes")
        if not all(is_int(v) and INT64_MIN <= v <= INT64_MAX for v in self.label_map):
            problems.append("label_map values must be integers within int64 (COCO category ids)")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(
                is_finite_number(v) for v in (*self.mean, *self.std)):
            problems.append("mean/std must be 3 finite numbers each")
        elif any(s < MIN_STD for s in self.std):
            # A std of 1e-320 passes "> 0" and turns every pixel into inf or NaN.
            problems.append(f"std {list(self.std)} has a value below {MIN_STD:g}")
        if self.precision not in ("fp32", "fp16", "int8"):
            problems.append(f"unknown precision {self.precision!r}")
        for name in ("resize_shorter", "resize_max"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} {value} is not positive")
            elif value is not None and value > MAX_CANVAS_SIDE:
                problems.append(f"{name} {value} is above {MAX_CANVAS_SIDE} pixels")
        if self.batch_size is not None and not 0 < self.batch_size <= MAX_BATCH:
            problems.append(f"batch_size {self.batch_size} is not within 1..{MAX_BATCH}")
        if problems:
            raise ModelFormatError(source, "invalid detr-edge metadata: " + "; ".join(problems))


def meta_from_properties(properties: Mapping[str, str], source: str = "<onnx model>"
                         ) -> ModelMeta:
    """The :class:`ModelMeta` stored under :data:`METADATA_KEY` in an ONNX model's
    ``metadata_props`` (as a key -> value mapping); ``ModelFormatError`` if absent or
    invalid. The one reader for ``export.onnx_meta`` and the ONNX Runtime backend."""
    if METADATA_KEY not in properties:
        raise ModelFormatError(source, f"ONNX model has no '{METADATA_KEY}' metadata (was it "
                               "exported by `detr-edge export-onnx`?)")
    return ModelMeta.from_json(properties[METADATA_KEY], source)


# JSON types of the metadata fields. The document comes from a model file, which
# may be corrupt or hostile: a string where a number belongs must be a clear
# ModelFormatError, not a TypeError deep in preprocessing.




def _is_triple(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(is_finite_number(x) for x in v)


_FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "preset": (lambda v: isinstance(v, str), "a string"),
    "input_height": (is_int, "an integer"),
    "input_width": (is_int, "an integer"),
    "class_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                    "a list of strings"),
    "label_map": (lambda v: isinstance(v, list) and all(is_int(x) for x in v),
                  "a list of integers"),
    "mean": (_is_triple, "3 finite numbers"),
    "std": (_is_triple, "3 finite numbers"),
    "batch_size": (lambda v: v is None or is_int(v), "an integer or null"),
    "with_mask": (lambda v: isinstance(v, bool), "true or false"),
    "resize_shorter": (lambda v: v is None or is_int(v), "an integer or null"),
    "resize_max": (lambda v: v is None or is_int(v), "an integer or null"),
    "precision": (lambda v: isinstance(v, str), "a string"),
    "exporter_version": (lambda v: isinstance(v, str), "a string"),
    "format_version": (is_int, "an integer"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
    "decoding": (lambda v: isinstance(v, dict), "an object"),
}
_DECODING_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "score_threshold": (is_finite_number, "a finite number"),
    "top_k": (lambda v: v is None or (is_int(v) and v >= 0), "null or an integer >= 0"),
    "second_best": (lambda v: isinstance(v, bool), "true or false"),
}


def _type_problem(raw: dict[str, Any]) -> str | None:
    """The first field of ``raw`` whose JSON type is wrong, described; else None."""
    for table, doc, prefix in ((_FIELD_TYPES, raw, ""),
                               (_DECODING_TYPES, raw.get("decoding"), "decoding.")):
        if not isinstance(doc, dict):
            continue
        for name, (ok, wanted) in table.items():
            if name in doc and not ok(doc[name]):
                return f"field {prefix}{name} must be {wanted}, got {_short(doc[name])}"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
