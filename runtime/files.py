"""Opening user-named files: regular files only, never a FIFO or a device.

``open()`` on a FIFO blocks until a writer appears (``eval`` hung on a FIFO
among a split's images), and a character device such as ``/dev/zero`` reads
forever. Files are opened with ``O_NONBLOCK`` (which makes opening a FIFO
return at once) and checked with ``fstat`` on the open descriptor, so a file
swapped for a FIFO between a check and the open is refused too.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from runtime.errors import DataError, InputError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))


def kind_of(mode: int) -> str:
    """'a FIFO (named pipe)', 'a directory', ... for a non-regular ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def is_regular(path: str | os.PathLike[str]) -> bool:
    """True for a regular file (symlinks followed); never opens ``path``."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return False


def open_regular(path: str | os.PathLike[str], *,
                 error: type[InputError] = DataError) -> BinaryIO:
    """Open ``path`` for binary reading; ``error(path, problem)`` unless it is a regular file."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        raise error(p, "file not found") from exc
    except PermissionError as exc:
        raise error(p, "permission denied") from exc
    except IsADirectoryError as exc:
        raise error(p, "is a directory, not a file") from exc
    except (OSError, ValueError) as exc:
        raise error(p, f"cannot open ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(p, f"is {kind_of(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike[str], *, error: type[InputError] = DataError,
                       max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file; ``error`` when it is larger than ``max_bytes``."""
    with open_regular(path, error=error) as fh:
        if max_bytes is not None:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise error(path, f"file is {size} bytes, above the limit of {max_bytes}")
        try:
            return fh.read()
        except OSError as exc:
            raise error(path, f"cannot read ({exc.strerror or exc})") from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks): the content key of
    calibration caches, pipeline stages, bundle manifests and reference files."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
