"""Reading a file's bytes safely, once, and naming what it is when it is not a regular file.

Every path is treated as hostile: a named pipe must not block, a directory or a device must be
refused with a clear reason, and the metadata must describe exactly the bytes that were read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat


def read_bytes(path: str | os.PathLike) -> tuple[bytes, os.stat_result]:
    """Read a whole regular file once; return its bytes and its fstat. Raises OSError subclasses."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    # O_NONBLOCK: opening a named pipe (FIFO) for reading would otherwise block forever waiting
    # for a writer; with it the open returns at once and the fstat below rejects the FIFO.
    # It has no effect on regular files.
    flags |= getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        # fstat on the open descriptor (not stat on the path) so the metadata describes exactly
        # the file we read, even if the path is replaced meanwhile.
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(
                errno.EINVAL,
                f"not a regular file (it is {_file_type_name(st.st_mode)})",
                os.fspath(path),
            )
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1  # now owned (and closed) by f
            data = f.read()
    finally:
        if fd >= 0:
            os.close(fd)
    return data, st


def _file_type_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _size_or_unknown(path: str | os.PathLike) -> int:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return -1
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def _mtime_or_unknown(path: str | os.PathLike) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except (OSError, ValueError):
        return -1
