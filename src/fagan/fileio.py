"""Atomic file writes, and checks that an output path can be written before any work.

A crash, a kill or a full disk never leaves a half-written file (:func:`atomic_write`),
and no error names the temporary file it writes through: errors name the destination.
:func:`check_output_file` and :func:`check_output_dir` turn an output path that cannot
be written (a parent that is a file, a destination that is a folder) into one
:class:`~fagan.errors.FaganError` line, so that commands can refuse it before they start.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from fagan.errors import FaganError

__all__ = ["atomic_write", "check_output_dir", "check_output_file"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_in_the_way(path: Path) -> Path | None:
    """The first ancestor of ``path`` (from the root down) that exists and is not a folder."""
    for parent in reversed(path.parents):
        if not parent.exists():
            return None  # nothing below a missing folder exists either
        if not parent.is_dir():
            return parent
    return None


def _not_writable(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a folder this process cannot write."""
    for parent in path.parents:
        if parent.exists():
            return None if os.access(parent, os.W_OK | os.X_OK) else parent
    return None


def check_output_file(path: str | os.PathLike) -> Path:
    """Checks that a file can be written at ``path`` (its missing folders created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FaganError: ``path`` is a folder, one of its parents is a file, or the folder
            that would hold it is not writable; the message names ``path``.
    """
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise FaganError(f"cannot write {path}: {blocker} is a file, not a folder")
    if path.is_dir():
        raise FaganError(f"cannot write {path}: it is a folder")
    locked = _not_writable(path)
    if locked is not None:
        raise FaganError(f"cannot write {path}: no permission to write in {locked}")
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """Checks that ``path`` is, or can be created as, a folder to write files into.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FaganError: ``path`` or one of its parents is a file, or it cannot be written.
    """
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise FaganError(f"cannot write into {path}: {blocker} is a file, not a folder")
    if path.exists() and not path.is_dir():
        raise FaganError(f"cannot write into {path}: it is a file, not a folder")
    if path.is_dir():
        locked = None if os.access(path, os.W_OK | os.X_OK) else path
    else:
        locked = _not_writable(path)
    if locked is not None:
        raise FaganError(f"cannot write into {path}: no permission to write in {locked}")
    return path


def _naming(error: OSError, tmp: Path, path: Path) -> OSError:
    """``error`` naming the destination when it names the temporary file."""
    if str(tmp) in (error.filename, error.filename2):
        return OSError(error.errno, error.strerror, str(path))
    return error


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Writes a file through a temporary sibling, flushes it to disk, renames it into place.

    Readers see either the previous file or the complete new one. On any failure the
    temporary file is removed and the exception propagates; the previous file is intact.
    An :class:`OSError` names ``path``, never the temporary file.

    Args:
        path: the destination; its parent folders are created.
        write: called with the temporary path (same folder, same suffix); must write
            the complete file there.

    Returns:
        The destination path.

    Raises:
        OSError: ``path`` is a folder (``EISDIR``), a parent is a file (``ENOTDIR``),
            or the write failed (no space, no permission).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        renamed = _naming(error, tmp, path)
        if renamed is error:
            raise
        raise renamed from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
