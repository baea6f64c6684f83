"""Shared checks of the CLI error tests (test_cli_errors.py, test_cli_model_errors.py,
test_disk_full_and_signals.py): what "one clear line, exit code 2" means."""

from __future__ import annotations

import contextlib
import io
import re
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]
BAD_IMAGES = Path(__file__).parent / "data" / "bad" / "images"


def visible_lines(err: str) -> list[str]:
    """The stderr lines a terminal keeps: progress bars redraw with '\\r', so only the
    text after the last '\\r' of each line stays visible; blank lines are dropped."""
    lines = (line.rsplit("\r", 1)[-1] for line in err.split("\n"))
    return [line for line in lines if line.strip()]


def assert_one_line_error(code: int, err: str, command: str, *patterns: str) -> str:
    """Exit code 2, exactly one visible stderr line, no traceback, every regex found."""
    lines = visible_lines(err)
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"detr-edge {command}: error: "), line
    for pattern in patterns:
        assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
    return line


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *patterns: str) -> str:
    """Run ``detr-edge <argv>`` in-process; check it is a one-line user error."""
    code = main(argv)
    return assert_one_line_error(code, capsys.readouterr().err, argv[0], *patterns)


def make_dataset(root: Path) -> Path:
    """A 4 train + 2 val image synthetic COCO dataset of 64 px images under ``root``."""
    from detr.data.synthetic import ShapesConfig, make_shapes_dataset

    make_shapes_dataset(root, ShapesConfig(seed=1, num_train=4, num_val=2, image_size=64,
                                           max_objects=2), progress=False)
    return root


def sigint_not_ignored() -> None:
    """Make children started after this get SIGINT's default action.

    A suite started in the background (``make test &`` from a script) inherits
    SIGINT as *ignored*, children inherit that through exec, and Python then
    never raises KeyboardInterrupt, so the Ctrl-C path could not be tested.
    A Python-level handler in this process is reset to the default on exec.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


@contextlib.contextmanager
def memory_cap(extra: int = 3 << 30) -> Iterator[None]:
    """Address-space limit of this process: what it maps now plus ``extra``; restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_bytes() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def capped_cli(argv: list[str]) -> tuple[int, str]:
    """``detr-edge <argv>`` in-process under the memory cap: (exit code, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with memory_cap(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, err.getvalue()


def refused_capped(argv: list[str], *patterns: str) -> str:
    code, err = capped_cli(argv)
    return assert_one_line_error(code, err, argv[0], *patterns)
