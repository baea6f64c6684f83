"""The ``detr-edge`` command: one parser, lazily loaded subcommands.

Each subcommand lives in ``<package>/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import
nothing heavy at module level, so ``detr-edge --help`` and ``detr-edge predict``
work on a runtime-only install (no torch). A command whose package cannot be
imported on this install is still listed, and says which extra to install.

Library errors (:class:`runtime.errors.DetrEdgeError`) become one line on
stderr and exit code 2, and so does an ``OSError`` that names a file (e.g. a
disk that filled up during a write no atomic writer covered). Ctrl-C becomes
exit code 130 with no traceback. SIGTERM (what ``kill``, schedulers and
container runtimes send) raises :class:`runtime.errors.Terminated`, a
``KeyboardInterrupt``, so long runs stop through the same clean path as Ctrl-C
(checkpoint kept, resume hint printed), then exit with code 143; a second
SIGTERM kills at once. Warnings raised while a command runs are printed when it
ends, and dropped when it fails, so the error stays the only line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NoReturn, TextIO

from runtime.atomic import DISK_FULL_ERRNOS, write_error_problem
from runtime.errors import DetrEdgeError, Terminated, one_line

# (name, module, one-line help, pip extra needed)
COMMANDS: list[tuple[str, str, str, str]] = [
    ("make-dataset", "detr.commands.make_dataset",
     "write the synthetic COCO-format 'shapes' dataset", "train"),
    ("pretrain-backbone", "detr.commands.pretrain_backbone",
     "pretrain a ResNet backbone on the dataset's object crops (no downloads)", "train"),
    ("train", "detr.commands.train", "train DETR with the set loss", "train"),
    ("eval", "detr.commands.evaluate", "COCO AP of a checkpoint on a dataset", "train"),
    ("export-onnx", "export.commands.export_onnx",
     "export a checkpoint to ONNX (FP32 or FP16) with a parity report", "train,export"),
    ("check-onnx", "export.commands.check_onnx",
     "check that TensorRT can build an ONNX model (runs on CPU)", "device"),
    ("quantize", "export.commands.quantize",
     "INT8 explicit Q/DQ ONNX within an AP budget", "train,export"),
    ("build-engine", "export.commands.build_engine",
     "compile a TensorRT engine from an ONNX model", "device"),
    ("predict", "runtime.commands.predict",
     "detect objects in images with an ONNX model or engine", "onnx"),
    ("benchmark", "benchmarks.commands.benchmark",
     "accuracy and speed of every backend x precision against PyTorch", "device"),
    ("bundle", "benchmarks.commands.bundle",
     "gather ONNX models, images, annotations and the PyTorch reference for a device",
     "device"),
    ("pipeline", "benchmarks.commands.pipeline",
     "the main job: dataset -> export -> quantize -> engines -> benchmark", "train,export,bench"),
]


# Top-level module -> the extra that installs it, for "missing package" errors. The
# `device` extra is the torch-free install of a Jetson / GPU box (TensorRT itself
# comes from JetPack, or from the `trt` extra on x86).
PROVIDED_BY = {
    "torch": "train", "torchvision": "train", "scipy": "train", "safetensors": "train",
    "onnx": "device", "onnxruntime": "device", "pycocotools": "device",
    "onnxslim": "export", "matplotlib": "bench", "transformers": "dev",
    "tensorrt": "trt", "cuda": "trt",
}


def missing_package_message(exc: ImportError) -> str:
    """One line naming the missing module and the extra that provides it."""
    top = (exc.name or "").split(".")[0]
    extra = PROVIDED_BY.get(top)
    if extra == "trt":
        hint = " (pip install 'detr-edge[trt]' on x86; on a Jetson it comes with JetPack)"
    elif extra:
        hint = f" (pip install 'detr-edge[{extra}]')"
    else:
        hint = ""
    return f"a required package is missing: {exc}{hint}"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: usage is left to ``--help``, so a
    mistyped option is one line, like every other error (subcommand parsers are
    created with the same class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="detr-edge",
        description="DETR from training to edge deployment "
        "(train -> export-onnx -> quantize -> build-engine -> benchmark).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text, extra in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            top = (exc.name or "").split(".")[0]
            extra = PROVIDED_BY.get(top, extra)  # the extra that really provides it
            p.set_defaults(_unavailable=f"needs the '{extra}' extra "
                           f"(pip install 'detr-edge[{extra}]'): {exc}")
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    prog = f"detr-edge {args.command}"
    if getattr(args, "_unavailable", None):
        print(f"{prog}: error: {args._unavailable}", file=sys.stderr)
        return 2
    held: list[str] = []
    try:
        with _sigterm_as_interrupt(), _hold_warnings(held):
            code = int(args._run(args) or 0)
        _show(held)
        return code
    except DetrEdgeError as exc:
        return _error(prog, str(exc))
    except ImportError as exc:
        return _error(prog, missing_package_message(exc))
    except OSError as exc:
        disk_full = exc.errno in DISK_FULL_ERRNOS
        if exc.filename is None and not disk_full:
            raise  # names no file: more likely a bug than a user error, keep the traceback
        problem = write_error_problem(exc) if disk_full else (exc.strerror or str(exc))
        return _error(prog, f"{exc.filename or 'output'}: {problem}")
    except Terminated:
        _show(held)
        print(f"\n{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _show(held)
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130


def _error(prog: str, message: str) -> int:
    """Print the one error line (the warnings held back are dropped) and return 2."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return 2


_MAX_HELD = 20  # distinct warnings kept for the end of a run


@contextlib.contextmanager
def _hold_warnings(held: list[str]) -> Iterator[None]:
    """Hold the warnings a command emits and print them when it ends without an error.

    Libraries warn on the way to a failure (torch about a checkpoint, PIL about
    EXIF, onnx about opsets); printed as they come, they would stand before the
    one error line. Filters are untouched (no suppression): only where a
    warning is written changes, and only while the command runs.
    """
    previous = warnings.showwarning

    def hold(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        if len(held) < _MAX_HELD and text not in held:
            held.append(text)

    warnings.showwarning = hold
    try:
        yield
    finally:
        warnings.showwarning = previous


def _show(held: list[str]) -> None:
    for text in held:
        sys.stderr.write(text)
    held.clear()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises ``Terminated`` in the main thread.

    Only the first SIGTERM does: the handler restores the default action, so a
    second one ends the process even if clean-up hangs. Outside the main thread
    (``main`` called from a worker thread) signals cannot be handled; nothing
    changes there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
