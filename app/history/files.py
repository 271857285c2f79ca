"""Private files of the history: atomic writes and user-only permissions.

A file is written to a temporary name in its final directory, fsynced, then renamed over the
final name, so a crash or a failed write leaves the previous file untouched. Safe to call from
any thread: no SQLite, no Qt.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the user alone; tighten it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then move it to ``path`` atomically.

    Raises whatever ``write`` raises; the temporary file is removed and ``path`` keeps its
    previous content in that case.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        if not tmp.exists():
            raise OSError(f"the writer did not create {tmp}")
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomically(path: Path, payload: bytes) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_bytes(payload)

    return write_atomically(path, write)
