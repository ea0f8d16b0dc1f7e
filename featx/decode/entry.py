"""The entry points: a path (:func:`decode_file`) or deferred bytes (:func:`decode_deferred`) -> Decoded.

They never raise for bad input: every failure, from a missing file to a damaged image, becomes a
Decoded whose ``skip`` says what was wrong.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Container

from featx.decode.diagnose import _out_of_memory_skip
from featx.decode.files import _mtime_or_unknown, _size_or_unknown, read_bytes, sha256_bytes
from featx.decode.image import DEFAULT_MAX_PIXELS, open_rgb
from featx.decode.outcome import DecodeError, Decoded, Skip
from featx.decode.resize import _check_size, resize_rgb


def decode_file(
    path: str | os.PathLike,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    known_hashes: Container[str] = frozenset(),
    defer: Callable[[bytes], bool] | None = None,
) -> Decoded:
    """Read and decode one file to uint8 RGB pixels of ``size`` = (height, width).

    Never raises for bad input: every failure becomes ``Decoded(pixels=None, skip=Skip(...))``.
    ``sha256``/``nbytes`` are filled whenever the bytes were read. If the file's sha256 is in
    ``known_hashes`` it is read and hashed but not decoded: ``pixels`` and ``skip`` are both
    None (the caller already has results for that content). Raises ValueError only for an
    invalid ``size`` and TypeError for a ``path`` that is not a path (programming errors).
    ``defer(data)``, when given and true for the file's bytes (read and hashed as always), returns
    them undecoded in ``Decoded.encoded`` for a batched decoder; decode_deferred decodes them here.
    """
    h, w = _check_size(size)
    path_str = os.fsdecode(os.fspath(path))

    def skipped(kind: str, detail: str, nbytes: int = -1, mtime: int = -1) -> Decoded:
        # The file's bytes were never read here, so there is no hash.
        return Decoded(path_str, "", nbytes, mtime, None, Skip(kind, detail))

    try:
        data, st = read_bytes(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return skipped("missing", f"broken symbolic link: its target {target!r} does not exist")
        return skipped("missing", f"no such file ({e.strerror or e})")
    except IsADirectoryError:
        return skipped("unreadable", "it is a directory, not a file", mtime=_mtime_or_unknown(path))
    except PermissionError:
        return skipped(
            "unreadable",
            "permission denied: the user running featx may not read this file",
            nbytes=_size_or_unknown(path),
            mtime=_mtime_or_unknown(path),
        )
    except OSError as e:
        if e.errno == errno.ELOOP:
            detail = "it is a symbolic link that leads back to itself (Too many levels of symbolic links)"
        else:
            detail = f"could not read the file: {e.strerror or e}"
        return skipped(
            "unreadable",
            detail,
            nbytes=_size_or_unknown(path),
            mtime=_mtime_or_unknown(path),
        )
    except ValueError as e:  # e.g. "embedded null byte" in a path from a scraped list
        return skipped("unreadable", f"invalid path: {e}")

    digest = sha256_bytes(data)
    nbytes, mtime_ns = len(data), st.st_mtime_ns
    if data and digest in known_hashes:
        # Same bytes as something already processed (e.g. features cached under this hash):
        # decoding is the expensive part, and its result would be identical.
        return Decoded(path_str, digest, nbytes, mtime_ns, None, None)
    if defer is not None and defer(data):
        return Decoded(path_str, digest, nbytes, mtime_ns, None, None, data)
    return _decode_data(path_str, data, digest, nbytes, mtime_ns, (h, w), max_pixels)


def decode_deferred(decoded: Decoded, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode a file decode_file deferred (``decoded.encoded``) exactly as decode_file would have."""
    if decoded.encoded is None:
        raise ValueError(f"{decoded.path}: nothing deferred to decode")
    return _decode_data(decoded.path, decoded.encoded, decoded.sha256, decoded.nbytes, decoded.mtime_ns,
                        _check_size(size), max_pixels)


def _decode_data(path_str: str, data: bytes, digest: str, nbytes: int, mtime_ns: int, size: tuple[int, int],
                 max_pixels: int) -> Decoded:
    h, w = size
    # A square draft request keeps both sides >= the target whichever way EXIF rotates the image.
    side = max(h, w)
    try:
        img = open_rgb(data, draft_size=(side, side), max_pixels=max_pixels)
        pixels = resize_rgb(img, (h, w))
    except DecodeError as e:
        return Decoded(path_str, digest, nbytes, mtime_ns, None, e.skip)
    except MemoryError:
        return Decoded(path_str, digest, nbytes, mtime_ns, None, _out_of_memory_skip(None, None))
    except Exception as e:  # last line of defence: one odd file must not stop a 100k-image run
        skip = Skip("corrupt", f"unexpected error while decoding: {type(e).__name__}: {e}")
        return Decoded(path_str, digest, nbytes, mtime_ns, None, skip)
    return Decoded(path_str, digest, nbytes, mtime_ns, pixels, None)
