"""Atomic file writes: an interrupted write leaves the old file or the new one,
never a half-written file.

The data goes to a temporary file in the same directory (same filesystem, so
``os.replace`` is an atomic rename), is flushed and fsynced, then renamed over
the destination. Out-of-disk (ENOSPC, EDQUOT, EFBIG) and permission problems
surface as ``InputError`` naming the destination; the temporary file is removed.

The new file gets the permissions of the file it replaces, or the usual
``0o666 & ~umask`` of a new file (``mkstemp`` alone would make every output
owner-only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from runtime.errors import InputError

# Errors that mean "the disk (or quota, or RLIMIT_FSIZE) is full", not "bad path".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any
    # thread could create files with the temporary value.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_error_problem(exc: OSError) -> str:
    """The problem part of a one-line message for a failed write of a file."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device (or disk quota exceeded) while writing"
    if exc.errno == errno.EFBIG:
        return "file too large for the file system or the process file-size limit"
    return f"cannot write: {exc.strerror or exc}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on clean exit rename it onto ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed
    and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise InputError(dest, write_error_problem(exc)) from exc
    try:
        fh: IO[Any] = (os.fdopen(fd, "w", encoding="utf-8") if mode == "w"
                       else os.fdopen(fd, "wb"))
        with fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), _new_file_mode(dest))
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        _remove_quietly(tmp)
        kept = "; the previous file, if any, is unchanged" if exc.errno in DISK_FULL_ERRNOS else ""
        raise InputError(dest, write_error_problem(exc) + kept) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy ``src`` to ``dst`` atomically (streamed in 1 MiB chunks): an interrupted
    copy or a full disk leaves ``dst`` as it was, never a truncated file."""
    import shutil

    with open(src, "rb") as fin, atomic_write(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _new_file_mode(dest: Path) -> int:
    """Permissions for the replacement: those of the old file, else 0o666 & ~umask."""
    try:
        return dest.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
