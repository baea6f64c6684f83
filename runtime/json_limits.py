"""The one JSON reader for untrusted documents: depth, number and size limits.

Every JSON input of detr-edge comes from a file a user handed over: ONNX
metadata, engine headers, COCO annotations, a Hugging Face ``config.json``,
pipeline stage files. ``json.loads`` alone turns hostile or broken documents
into tracebacks: nesting a few thousand levels deep raises ``RecursionError``,
an integer of 5,000 digits raises ``ValueError`` (CPython's int/str limit), and
a 10**400 integer parses but overflows every float conversion downstream. Here
each of those is the caller's one-line error naming the file.

Limits (module constants, stated in the README):
- depth: at most :data:`MAX_DEPTH` nested arrays/objects (COCO needs 4);
- numbers: at most :data:`MAX_NUMBER_CHARS` characters per literal, and
  integers within int64 (every id and size this project reads fits);
- NaN / Infinity literals (not JSON, but Python writes them) are refused
  unless ``allow_nan=True``;
- size: ``max_bytes`` per call (e.g. metadata 16 MiB; COCO files are large).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import DataError, InputError

MAX_DEPTH = 64  # nested arrays/objects; COCO needs 4, detr-edge metadata 3
MAX_NUMBER_CHARS = 64  # characters of one number literal (int64 needs 20, a double ~25)
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

# A JSON string (with escapes): removed before the bracket count, so '[' inside
# a class name does not count as nesting.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_CHUNK = 1 << 24  # bytes per step of the nesting scan


class _Refused(ValueError):
    """A limit was hit inside a json.loads hook (the hooks may only raise)."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"an integer of {len(text)} digits (limit {MAX_NUMBER_CHARS} characters)")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Refused(f"integer {text} is outside the int64 range")
    return value


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number of {len(text)} characters (limit {MAX_NUMBER_CHARS})")
    return float(text)  # 1e999 -> inf; callers that need finite values check them


def _refuse_constant(name: str) -> float:
    raise _Refused(f"{name} is not a JSON number")



def is_int(v: Any) -> bool:
    """A JSON integer: int and not bool (``True`` is an ``int`` to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """int or float (not bool) that is a finite float (JSON ints can be 10**400)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False

def finite_or_none(value: float | None) -> float | None:
    """``None`` for NaN/inf (e.g. "not measured"): the readers here refuse them."""
    return None if value is None or not math.isfinite(value) else float(value)


def nesting_depth(data: bytes) -> int:
    """Deepest ``[``/``{`` nesting of ``data`` (strings skipped); linear, no recursion."""
    codes = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    deepest, level = 0, 0
    for start in range(0, len(codes), _CHUNK):  # chunks: a 400 MB COCO file stays cheap
        part = codes[start:start + _CHUNK]
        steps = (part == ord("[")).astype(np.int32) + (part == ord("{"))
        steps -= (part == ord("]")).astype(np.int32) + (part == ord("}"))
        running = np.cumsum(steps) + level
        deepest = max(deepest, int(running.max(initial=level)))
        level = int(running[-1])
    return deepest


def loads(text: str | bytes, source: str | os.PathLike[str], *, what: str = "JSON",
          error: type[InputError] = DataError, max_bytes: int | None = None,
          allow_nan: bool = False) -> Any:
    """Parse ``text`` within the limits above; raise ``error(source, problem)``.

    ``what`` names the document in the message ("detr-edge metadata", "COCO
    annotation file"); ``error`` is the caller's InputError subclass.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if max_bytes is not None and len(data) > max_bytes:
        raise error(source, f"{what} is {len(data)} bytes, above the limit of {max_bytes}")
    depth = nesting_depth(data)
    if depth > MAX_DEPTH:
        raise error(source, f"{what} is nested {depth} levels deep (limit {MAX_DEPTH})")
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(source, f"{what} is not JSON (not UTF-8 text: {exc.reason})") from exc
    hooks: dict[str, Any] = {"parse_int": _parse_int, "parse_float": _parse_float}
    if not allow_nan:
        hooks["parse_constant"] = _refuse_constant
    try:
        return json.loads(decoded, **hooks)
    except _Refused as exc:
        raise error(source, f"{what} holds {exc}") from exc
    except json.JSONDecodeError as exc:
        raise error(source, f"{what} is not JSON ({exc.msg} at line {exc.lineno} "
                    f"column {exc.colno})") from exc
    except (ValueError, RecursionError) as exc:  # int() limits; deep nesting missed above
        raise error(source, f"{what} cannot be parsed ({type(exc).__name__})") from exc


def read_json_file(path: str | os.PathLike[str], *, what: str = "JSON",
                   error: type[InputError] = DataError, max_bytes: int | None = None,
                   allow_nan: bool = False) -> Any:
    """Read a regular file and parse it with :func:`loads` (a FIFO is refused, not read)."""
    from runtime.files import read_regular_bytes

    p = Path(path)
    return loads(read_regular_bytes(p, error=error, max_bytes=max_bytes), p, what=what,
                 error=error, max_bytes=max_bytes, allow_nan=allow_nan)
