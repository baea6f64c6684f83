"""Typed exceptions shared by every package.

Library code raises these; only the CLI (runtime/cli.py) turns them into a
one-line message and exit code 2. Keeping them in runtime/ lets the thin
runtime, the exporters and the training code share one hierarchy without the
runtime importing torch.
"""

from __future__ import annotations

from os import PathLike

# C0 controls, DEL and the C1 block: anything that would split or redraw the one line.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, 0x85)})


def one_line(text: str) -> str:
    """``text`` with line breaks and control characters escaped (``\\n``, ``\\x1b``).

    A file may be named ``a\\nb.png``; the CLI's promise is one stderr line, and a
    terminal escape inside a file name must not reach the terminal either.
    """
    return text.translate(_CONTROL)


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first non-empty line of ``str(exc)`` (or its type name), at most ``limit``
    characters: libraries (ONNX Runtime, onnx, torch) raise messages of many lines."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return one_line(text if len(text) <= limit else text[:limit - 3] + "...")


class DetrEdgeError(Exception):
    """Base class of every error that is the user's input, not a bug.

    The CLI prints ``str(error)`` on one line and exits with code 2.
    """


class InputError(DetrEdgeError):
    """A file or argument given by the user is missing, malformed or incompatible.

    Formats as ``"<where>: <problem>"`` so the message always names the file or
    argument at fault.
    """

    def __init__(self, where: str | PathLike[str], problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(one_line(f"{self.where}: {problem}"))

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        # Pickle as (where, problem): the default would call cls(message) and fail,
        # and errors must cross process boundaries (DataLoader workers).
        return type(self), (self.where, self.problem)


class ModelFormatError(InputError):
    """A checkpoint, ONNX model or engine file cannot be used (corrupt, truncated,
    wrong architecture, class count, TensorRT version or GPU)."""


class DataError(InputError):
    """An image or annotation file is unreadable or violates the COCO schema."""


class BackendUnavailableError(DetrEdgeError):
    """An optional backend (onnxruntime, TensorRT, CUDA) is not installed or has
    no usable device. Carries the reason shown in benchmark 'skipped' rows."""


class TrainingDivergedError(DetrEdgeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received while a ``detr-edge`` command ran (see ``runtime.cli``).

    A ``KeyboardInterrupt`` on purpose: every handler that cleans up after
    Ctrl-C (the training loop's resume hint, quantize's cache note, atomic
    writes removing their temporary file) runs for SIGTERM too.
    """
