"""Validators of command-line option values, shared by every ``detr-edge`` command.

argparse checks types only: ``--threshold 2``, ``--threshold nan``,
``--height 100000`` or ``--threads -1`` parse, and then end in a wrong result, a
traceback or the allocator. Each command's ``run`` first calls
:func:`check_options` with ``dest=check`` pairs; a bad value becomes
``InputError("--option-name", problem)``, one line naming the option exactly as
the user typed it (``--eval-size``, not an internal name).

A check takes a value and returns ``None`` when it is fine, else the problem
("must be in [0, 1]"). Sizes have upper bounds so that a typo is a one-line
error, not an allocation of hundreds of gigabytes.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from runtime.errors import InputError
from runtime.json_limits import is_int
from runtime.metadata import MAX_BATCH, MAX_CANVAS_SIDE

Check = Callable[[Any], "str | None"]

MAX_COUNT = 10_000_000  # images, runs, steps: far beyond any real run, far below overflow
MAX_THREADS = 1024
MAX_SEED = 2 ** 32 - 1  # numpy's seed range




def int_range(lo: int, hi: int, note: str = "") -> Check:
    """An integer in ``[lo, hi]``; ``note`` explains a special value (e.g. '0 = auto')."""
    def check(value: Any) -> str | None:
        if is_int(value) and lo <= value <= hi:
            return None
        return f"must be an integer in [{lo}, {hi}]{note}"
    return check


def number_range(lo: float, hi: float = math.inf, *, lo_open: bool = False) -> Check:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and inf fail."""
    def check(value: Any) -> str | None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and (value > lo if lo_open else value >= lo)
              and value <= hi)
        if ok:
            return None
        bracket = "(" if lo_open else "["
        upper = "inf)" if math.isinf(hi) else f"{hi:g}]"
        return f"must be a finite number in {bracket}{lo:g}, {upper}"
    return check


# The option kinds of detr-edge (use these rather than new ranges, so one option
# means the same everywhere).
probability = number_range(0.0, 1.0)  # --threshold: a score
percentile = number_range(0.0, 100.0, lo_open=True)  # --percentile
non_negative = number_range(0.0)  # learning rates, AP budgets, minutes
image_side = int_range(1, MAX_CANVAS_SIDE)  # --height, --width, --size, --eval-size
batch = int_range(1, MAX_BATCH)  # --batch-size, --batch
count = int_range(1, MAX_COUNT)  # --max-images, --runs, --epochs
count_or_zero = int_range(0, MAX_COUNT)  # --warmup, --eval-every, --num-val
threads = int_range(0, MAX_THREADS, " (0 = automatic)")  # --threads
seed = int_range(0, MAX_SEED)  # --seed
pixels = int_range(1, 10 ** 12)  # --max-pixels


def option_name(dest: str) -> str:
    """argparse ``dest`` -> the option as typed: ``eval_size`` -> ``--eval-size``."""
    return "--" + dest.replace("_", "-")


def check_options(args: argparse.Namespace, **rules: Check) -> None:
    """Check every option of ``args`` named in ``rules`` (by ``dest``); ``None`` passes.

    A list value (``nargs``) is checked element by element. Raises
    ``InputError(option, problem)`` for the first bad value.
    """
    for dest, check in rules.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            problem = check(item)
            if problem is not None:
                raise InputError(option_name(dest), f"{problem}, got {_show(item)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def add_decoding_arguments(parser: argparse.ArgumentParser, compatibility_flag: bool = True
                           ) -> None:
    """``--drop-no-object`` (and ``--second-best``, accepted for compatibility) of the
    commands that score AP: the official PostProcess (every slot keeps its best real
    class, as the paper's AP) is the default. ``args.drop_no_object`` -> decoding
    ``second_best=not args.drop_no_object``."""
    parser.add_argument("--drop-no-object", action="store_true",
                        help="decode by dropping slots whose top class is no-object (default: "
                        "the official PostProcess, every slot keeps its best real class, as "
                        "the paper's AP)")
    if compatibility_flag:
        parser.add_argument("--second-best", action="store_true",
                            help="accepted for compatibility: the official PostProcess is the "
                            "default")
