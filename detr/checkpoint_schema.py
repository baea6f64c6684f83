"""What a checkpoint may contain: the checks between unpickling and building a model.

Unpickling with ``weights_only=True`` keeps code from running, but everything it
returns is still data from the user's file: a ``hidden_dim`` of -5, a
``num_classes`` stored as a string, a 1-D ``query_embed.weight``, integer or
all-NaN weights, a ``train_config`` whose sizes are strings. Each of them used
to reach the model constructor or the training loop and end in a traceback
(or, for integer weights, a silent cast and AP 0). Every check here raises
``ModelFormatError(file, problem)``: one line naming the file.

Used by ``detr.checkpoint`` (own, official and Hugging Face checkpoints),
``detr.backbone`` (``backbone_weights`` files) and ``detr.train.state``
(``--resume``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detr.config import BACKBONES, DETRConfig
from runtime.errors import ModelFormatError, first_line
from runtime.json_limits import is_finite_number, is_int
from runtime.metadata import MAX_CANVAS_SIDE

# Upper bounds of the architecture fields: far above every published DETR
# (d=256, FFN 2048, 6+6 layers, 100-300 queries), low enough that a corrupt
# value is refused instead of allocating gigabytes before the first shape check.
MAX_MODEL = {"hidden_dim": 8192, "nheads": 256, "enc_layers": 64, "dec_layers": 64,
             "dim_feedforward": 65536, "num_queries": 10_000}
MAX_CLASSES = 100_000
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_BUFFERS = ("num_batches_tracked",)  # the only integer tensors of a DETR state dict






def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- unpickling -------------------------------------------------------------------------

def torch_load(file: Path, what: str = "checkpoint", safe_globals: list[Any] | None = None
               ) -> Any:
    """``torch.load(weights_only=True)`` with every failure as one line naming ``file``.

    torch's refusal of an unsafe global is many lines long and advises loading
    with ``weights_only=False``, which would run the file's code; the message
    here names the refused global and never gives that advice.
    """
    from runtime.files import open_regular

    try:
        with open_regular(file, error=ModelFormatError) as fh, \
                torch.serialization.safe_globals(safe_globals or []):
            return torch.load(fh, map_location="cpu", weights_only=True)
    except ModelFormatError:
        raise
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)|global ['`]?([\w.]+)", str(exc))
        if found:
            name = found.group(1) or found.group(2)
            raise ModelFormatError(file, f"refused to unpickle: the file references code outside "
                                   f"the allow-list ({name}); a {what} holds only tensors "
                                   "and plain containers") from exc
        if re.search(r"Unsupported|GLOBAL|global", str(exc)):  # e.g. a protocol-5 opcode
            # torch says "Unsupported operand" for garbage bytes and for opcodes of
            # other pickle protocols alike: the message covers both.
            raise ModelFormatError(file, f"refused to unpickle: cannot read {what} (truncated, "
                                   f"corrupt, or pickle features outside the allow-list: "
                                   f"{_without_advice(exc)})") from exc
        raise ModelFormatError(file, f"cannot read {what} (truncated or corrupt): "
                               f"{_without_advice(exc)}") from exc
    except Exception as exc:
        # The restricted unpickler parses untrusted bytes in Python and fails on
        # garbage with whatever it hits (EOFError, KeyError, IndexError, ...); none
        # of them can have run code, and all mean the file is not a checkpoint.
        raise ModelFormatError(file, f"cannot read {what} (truncated or corrupt): "
                               f"{type(exc).__name__}: {_without_advice(exc)}") from exc


def _without_advice(exc: BaseException) -> str:
    """The first line of torch's message that is not advice about ``weights_only``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "weights_only" not in ln and "safe_globals" not in ln]
    return first_line(useful[0]) if useful else type(exc).__name__


# ---- tensors ----------------------------------------------------------------------------

def check_state_dict(state: Any, file: Path, what: str = "state dict") -> dict[str, Tensor]:
    """``state`` as ``{str: Tensor}`` of finite floating-point weights, or an error.

    Integer tensors are allowed only for BatchNorm's ``num_batches_tracked``.
    Integer-typed weights would be cast silently (a model with AP 0); NaN or
    infinite weights make every output NaN (an export would then "agree" on
    zero detections).
    """
    if not isinstance(state, Mapping):
        raise ModelFormatError(file, f"{what} must be a mapping of names to tensors, got "
                               f"{type(state).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ModelFormatError(file, f"{what} has a key {_short(key)} that is not a string")
        if not isinstance(value, Tensor):
            raise ModelFormatError(file, f"{what} entry {key!r} is a {type(value).__name__}, "
                                   "not a tensor")
        if key.endswith(_INT_BUFFERS):
            out[key] = value
            continue
        if value.dtype not in _FLOAT_DTYPES:
            raise ModelFormatError(file, f"{what} entry {key!r} has dtype {value.dtype}; "
                                   "weights must be floating point")
        bad = _non_finite(value)
        if bad:
            raise ModelFormatError(file, f"{what} entry {key!r} has {bad} of {value.numel()} "
                                   "values NaN or infinite (a diverged or corrupt checkpoint)")
        out[key] = value
    return out


def _non_finite(value: Tensor) -> int:
    """Number of NaN/inf values. A sum is NaN or inf when any element is, and is ~5x
    cheaper than ``isfinite`` (a R50 checkpoint has 41 M values); only a non-finite
    sum (or a finite-valued sum that overflowed) pays for the exact count."""
    if value.numel() == 0 or math.isfinite(float(value.sum())):
        return 0
    return int((~torch.isfinite(value)).sum())


def check_detr_shapes(state: Mapping[str, Tensor], file: Path) -> None:
    """The tensors the architecture is read from must be 2-D and non-empty."""
    for key, min_rows in (("query_embed.weight", 1), ("class_embed.weight", 2)):
        value = state.get(key)
        if value is None:
            continue
        if value.dim() != 2 or value.shape[0] < min_rows or value.shape[1] < 1:
            raise ModelFormatError(file, f"{key} has shape {list(value.shape)}; expected "
                                   f"[{'K+1' if key.startswith('class') else 'queries'}, d]")
    classes = state.get("class_embed.weight")
    if classes is not None and classes.shape[0] - 1 > MAX_CLASSES:
        raise ModelFormatError(file, f"class_embed.weight has {classes.shape[0]} rows, above "
                               f"{MAX_CLASSES + 1}")


# ---- architecture -----------------------------------------------------------------------

def check_config_dict(raw: Any, file: Path) -> None:
    """The stored ``config`` (``dataclasses.asdict(DETRConfig)``): types and ranges of
    every known field; unknown fields (a newer writer) are ignored."""
    if not isinstance(raw, Mapping):
        raise ModelFormatError(file, f"'config' must be a mapping, got {type(raw).__name__}")
    for name, value in raw.items():
        problem = _config_field_problem(name, value)
        if problem:
            raise ModelFormatError(file, f"config field {name} {problem}, got {_short(value)}")


_FLAGS = ("dilation", "pre_norm", "aux_loss", "frozen_batchnorm", "freeze_stem")
_FIELD_RULES: dict[str, tuple[Any, str]] = {
    **{flag: (lambda v: isinstance(v, bool), "must be true or false") for flag in _FLAGS},
    "dropout": (lambda v: is_finite_number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
    "temperature": (lambda v: is_finite_number(v) and v > 0, "must be a positive number"),
    "backbone": (lambda v: v in BACKBONES, f"must be one of {list(BACKBONES)}"),
    "name": (lambda v: isinstance(v, str), "must be a string"),
    "backbone_weights": (lambda v: v is None or isinstance(v, str), "must be a path or null"),
    **{name: ((lambda v, hi=hi, lo=int(name != "enc_layers"): is_int(v) and lo <= v <= hi),
              f"must be an integer in [{int(name != 'enc_layers')}, {hi}]")
       for name, hi in MAX_MODEL.items()},
}


def _config_field_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for DETRConfig field ``name``; None if fine or unknown."""
    rule = _FIELD_RULES.get(name)
    if rule is None:
        return None
    ok, wanted = rule
    return None if ok(value) else wanted


def check_model_config(config: DETRConfig, file: Path) -> None:
    """Upper bounds of a config built from any source (stored, args, shapes, HF)."""
    for name, value in dataclasses.asdict(config).items():
        problem = _config_field_problem(name, value)
        if problem:
            raise ModelFormatError(file, f"architecture field {name} {problem}, got "
                                   f"{_short(value)}")


def check_num_classes(value: Any, file: Path) -> int:
    if not (is_int(value) and 1 <= value <= MAX_CLASSES):
        raise ModelFormatError(file, f"num_classes must be an integer in [1, {MAX_CLASSES}], "
                               f"got {_short(value)}")
    return value


def check_official_args(args: argparse.Namespace, file: Path) -> None:
    """The fields of an official checkpoint's ``args`` that the config is read from."""
    checks = {"dilation": "dilation", "pre_norm": "pre_norm", "aux_loss": "aux_loss",
              "nheads": "nheads", "dropout": "dropout"}
    for attr, field in checks.items():
        if hasattr(args, attr):
            problem = _config_field_problem(field, getattr(args, attr))
            if problem:
                raise ModelFormatError(file, f"args.{attr} {problem}, got "
                                       f"{_short(getattr(args, attr))}")


def check_hf_config(doc: Any, file: Path) -> dict[str, Any] | None:
    """A Hugging Face ``config.json``: None when it is not a DETR config, else the
    document with ``id2label`` keys as integers (checked)."""
    if not isinstance(doc, dict) or doc.get("model_type") != "detr":
        return None
    heads = doc.get("encoder_attention_heads", 8)
    if not (is_int(heads) and 1 <= heads <= MAX_MODEL["nheads"]):
        raise ModelFormatError(file, f"encoder_attention_heads must be an integer in [1, "
                               f"{MAX_MODEL['nheads']}], got {_short(heads)}")
    if doc.get("dilation") is not None and not isinstance(doc["dilation"], bool):
        raise ModelFormatError(file, f"dilation must be true or false, got "
                               f"{_short(doc['dilation'])}")
    dropout = doc.get("dropout", 0.1)
    if not (is_finite_number(dropout) and 0 <= dropout < 1):
        raise ModelFormatError(file, f"dropout must be a number in [0, 1), got {_short(dropout)}")
    id2label = doc.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict):
            raise ModelFormatError(file, "id2label must be an object")
        labels: dict[int, str] = {}
        for key, name in id2label.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 9) or not isinstance(name, str):
                raise ModelFormatError(file, f"id2label maps class indices to names; got "
                                       f"{_short(key)}: {_short(name)}")
            labels[int(key)] = name
        doc = {**doc, "id2label": labels}
    return doc


# ---- training state ---------------------------------------------------------------------

def check_train_config(raw: Any, file: Path) -> None:
    """The ``train_config`` of a training checkpoint: the fields later code reads
    (sizes for evaluation, preset and overrides for ``--resume``)."""
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        raise ModelFormatError(file, f"train_config must be a mapping, got {type(raw).__name__}")
    for name in ("eval_size", "max_size"):
        value = raw.get(name)
        if value is not None and not (is_int(value) and 1 <= value <= MAX_CANVAS_SIDE):
            raise ModelFormatError(file, f"train_config.{name} must be null or an integer in "
                                   f"[1, {MAX_CANVAS_SIDE}], got {_short(value)}")
    scales = raw.get("scales")
    if scales is not None and not (
            isinstance(scales, (list, tuple)) and scales
            and all(is_int(s) and 1 <= s <= MAX_CANVAS_SIDE for s in scales)):
        raise ModelFormatError(file, f"train_config.scales must be null or sizes in [1, "
                               f"{MAX_CANVAS_SIDE}], got {_short(scales)}")
    if "batch_size" in raw and not (is_int(raw["batch_size"]) and raw["batch_size"] >= 1):
        raise ModelFormatError(file, f"train_config.batch_size must be a positive integer, got "
                               f"{_short(raw['batch_size'])}")
    if "preset" in raw and not isinstance(raw["preset"], str):
        raise ModelFormatError(file, f"train_config.preset must be a string, got "
                               f"{_short(raw['preset'])}")
    overrides = raw.get("model_overrides", {})
    if not (isinstance(overrides, Mapping) and all(isinstance(k, str) for k in overrides)):
        raise ModelFormatError(file, f"train_config.model_overrides must map field names to "
                               f"values, got {_short(overrides)}")


def check_resize_record(raw: Any, file: Path) -> None:
    """The training resize rule recorded by ``detr.training_resize`` (eval and export
    resize every image by it: a negative or huge side would reach the allocator)."""
    if raw is None:
        return
    sides_ok = isinstance(raw, Mapping) and all(
        is_int(raw.get(k)) and 1 <= raw[k] <= MAX_CANVAS_SIDE for k in ("shorter", "max_size"))
    if not sides_ok or not isinstance(raw.get("padded"), bool):
        raise ModelFormatError(file, f"training_resize must hold sides 'shorter' and 'max_size' "
                               f"in [1, {MAX_CANVAS_SIDE}] and 'padded' true/false, got "
                               f"{_short(raw)}")


def check_training_fields(raw: Mapping[str, Any], file: Path) -> None:
    """The resume fields of a training checkpoint (``detr.train.state``)."""
    check_state_dict(raw["model"], file, "model")
    for key in ("optimizer", "lr_scheduler"):
        if not isinstance(raw[key], Mapping):
            raise ModelFormatError(file, f"{key} must be a state dict, got "
                                   f"{type(raw[key]).__name__}")
    if not (is_int(raw["epoch"]) and 0 <= raw["epoch"] < 10 ** 7):
        raise ModelFormatError(file, f"epoch must be a non-negative integer, got "
                               f"{_short(raw['epoch'])}")
    if not (isinstance(raw["rng_state"], list) and raw["rng_state"]):
        raise ModelFormatError(file, "rng_state must be a non-empty list (one per process)")
    check_train_config(raw["train_config"], file)


@contextlib.contextmanager
def restoring(file: Path, what: str) -> Iterator[None]:
    """Turn an error while restoring ``what`` from ``file`` (optimizer, scheduler, RNG
    state: torch checks them only as it applies them) into one line naming the file."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelFormatError(file, f"cannot restore the {what} ({first_line(exc)})") from exc
