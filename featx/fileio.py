"""Crash-safe file replacement: the one home of "temporary name, fsync, atomic rename, fsync folder".

A file written through these helpers is either the old one or the complete new one after a crash
or a power cut, never half of each: the new bytes go to a temporary name in the target's folder,
are fsynced, renamed over the target with :func:`os.replace` (atomic on POSIX and Windows), and
then the folder is fsynced so the rename itself is durable.

* :func:`write_bytes_atomically` — bytes in memory (classifier files).
* :func:`atomic_output` — a temporary path for a writer that wants a file name (Keras models).
* :func:`replace_atomically`, :func:`fsync_path`, :func:`fsync_dir` — the low-level pieces, for
  callers that name or fill their temporary files themselves (the store's main file and journal
  parts, whose names their cleanup looks for; weight downloads, streamed under a lock).
* :func:`json_default` — the ``default=`` of ``json.dumps`` for the metadata featx writes into its
  files (classifier files, fine-tuned models).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["fsync_path", "fsync_dir", "replace_atomically", "temporary_name", "write_bytes_atomically",
           "atomic_output", "json_default"]


def fsync_path(path: str | os.PathLike) -> None:
    """fsync the file (or folder) at ``path``; errors propagate."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so renames in it survive a power cut; a no-op where the file system (or the
    OS) does not support fsync on folders."""
    try:
        fsync_path(path)
    except OSError:
        pass


def replace_atomically(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the finished (already fsynced) ``tmp`` over ``target`` and fsync ``target``'s folder."""
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


def temporary_name(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden name beside ``target``: ``.NAME.PID.RANDOM`` + ``suffix``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def write_bytes_atomically(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` crash-safely. The temporary file is created with ``O_EXCL`` on
    a fresh random name (never following or clobbering someone else's file), with mode 0o666 so
    the umask decides permissions like a normal ``open()``; it is removed if anything fails."""
    tmp = temporary_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_atomically(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(target: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (not created) for the caller to write; when the
    block ends normally the file is fsynced and renamed over ``target``. The temporary file is
    removed whatever happens. ``suffix`` ends the temporary name (``".tmp.keras"`` for writers
    that insist on an extension)."""
    tmp = temporary_name(target, suffix)
    try:
        yield tmp
        fsync_path(tmp)
        replace_atomically(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def json_default(obj: Any) -> Any:
    """Plain JSON types for the values callers naturally have at hand (numpy scalars and arrays,
    paths, result dataclasses); anything else raises TypeError, as ``json.dumps`` expects."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-able")
