"""Output folders: never over an input, and one run's files replace the last run's together.

A command that writes several files into a folder (``predict``: predictions.json,
images.json, annotated/) writes them into a hidden staging folder inside it,
and only when the run has succeeded swaps each of them in for the previous
run's (:class:`StagedOutputs`). A run that fails on its tenth image leaves the
previous run's outputs as they were, not half replaced, and never leaves a mix
of the two runs. Entries of the previous run that this run does not write
(``annotated/`` after a run with ``--no-draw``) are removed in the same swap.

:func:`check_disjoint` refuses an output folder that contains an input or lies
inside an input folder, before anything is written: ``predict --images OUT/annotated
--out OUT`` used to overwrite its own input images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from runtime.errors import InputError


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_disjoint(out_dir: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]],
                   option: str = "--out") -> None:
    """Raise ``InputError(option, ...)`` when ``out_dir`` contains an input or is inside one.

    Paths are compared after resolving symlinks, so ``out -> images`` is caught.
    """
    out = _real(Path(out_dir))
    for raw in inputs:
        given = Path(raw)
        src = _real(given)
        if _inside(src, out):
            raise InputError(option, f"output folder {out_dir} contains the input {given}; "
                             "choose an output folder outside the inputs")
        if src.is_dir() and _inside(out, src):
            raise InputError(option, f"output folder {out_dir} is inside the input folder "
                             f"{given}; its outputs would become inputs of the next run")


class StagedOutputs:
    """Write a run's outputs under :attr:`path`, then :meth:`commit` them into ``out_dir``.

    ``names`` are every entry (file or folder) the command owns in ``out_dir``.
    Used as a context manager: leaving without :meth:`commit` (an error, Ctrl-C)
    deletes the staging folder and leaves ``out_dir`` untouched.
    """

    def __init__(self, out_dir: str | os.PathLike[str], names: Sequence[str]) -> None:
        self.out_dir = Path(out_dir)
        self.names = tuple(names)
        if os.path.lexists(self.out_dir) and not self.out_dir.is_dir():
            raise InputError(self.out_dir, "exists and is not a folder (the output folder)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out_dir))
        self._done = False

    def __enter__(self):  # returns self (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self) -> None:
        """Swap the staged entries in for the previous run's, all or none.

        The previous entries are first moved aside into a second hidden folder
        (renames within one file system: they cannot fail half-way for lack of
        space), then the new ones are moved in; any failure moves everything
        back before re-raising.
        """
        old = Path(tempfile.mkdtemp(prefix=".previous-", dir=self.out_dir))
        moved_out: list[str] = []
        moved_in: list[str] = []
        try:
            for name in self.names:
                if os.path.lexists(self.out_dir / name):
                    os.replace(self.out_dir / name, old / name)
                    moved_out.append(name)
            for name in self.names:
                if os.path.lexists(self.path / name):
                    os.replace(self.path / name, self.out_dir / name)
                    moved_in.append(name)
        except BaseException:
            for name in moved_in:
                os.replace(self.out_dir / name, self.path / name)
            for name in moved_out:
                os.replace(old / name, self.out_dir / name)
            shutil.rmtree(old, ignore_errors=True)
            raise
        self._done = True
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)
