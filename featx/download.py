"""Download of pretrained weights into Keras' cache: the only network access featx has.

keras.applications fetches a missing weights file on first use into ``$KERAS_HOME/models``;
featx does the same, from the same address (or a mirror serving the same file names), into the
same cache, so a file either of them fetched serves both.

featx does not call ``keras.utils.get_file`` for this, because it does not fit these needs:
it has no timeout (a stalled server hangs it forever), it writes straight to the final cache name
(a killed process leaves a truncated file that the next run loads), on a hash mismatch it raises but
leaves the bad file in the cache, it prints its progress bar on stdout (featx's stdout is the
summary or JSON), and it falls back to ``/tmp/.keras`` when the cache is not writable. The
downloader here:

* streams to a temporary name in the cache folder and renames it into place
  (:func:`featx.fileio.replace_atomically`: ``os.replace``, then an fsync of the folder)
  only after every check passed; a temporary left by a killed process is removed by the next
  download of that file, so the cache never holds a half-written file under the real name;
* refuses an HTML page (a proxy's login page), a short or truncated body, a file that is not
  HDF5, and a file whose hash differs from the one Keras publishes; files Keras publishes no hash
  for are checked by loading them into the backbone (``check``) before they enter the cache;
* serialises concurrent downloads of one file (several Dask workers starting at once) with a
  file lock next to it; the second process finds the file in place and does not fetch it again;
* times out a read after ``FEATX_DOWNLOAD_TIMEOUT`` seconds (default 30) of silence;
* shows a progress bar on stderr and honours the usual proxy variables (urllib's defaults).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from featx.fileio import replace_atomically

log = logging.getLogger("featx")

OFFLINE_ENV = "FEATX_OFFLINE"
MIRROR_ENV = "FEATX_WEIGHTS_MIRROR"
TIMEOUT_ENV = "FEATX_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CHUNK = 1 << 16
_PART = ".featx-part-"  # temporary names: .featx-part-<random>-<file name> (ends like the file: loadable)


class DownloadError(OSError):
    """A weights download failed or delivered a wrong file; nothing was kept. One-line message."""


def offline_mode(offline: bool | None = None) -> bool:
    """``offline`` when given, else the FEATX_OFFLINE environment variable (1/true/yes/on)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def weights_mirror(mirror: str | None = None) -> str | None:
    """``mirror`` when given, else FEATX_WEIGHTS_MIRROR, else None (Keras' own addresses)."""
    value = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
    value = (value or "").strip()
    if not value:
        return None
    if urllib.parse.urlsplit(value).scheme not in ("http", "https", "file"):
        raise ValueError(f"weights mirror {value!r} is not an http://, https:// or file:// address "
                         f"(set {MIRROR_ENV} to a base address serving the Keras weights file names)")
    return value


def mirror_url(mirror: str, file_name: str) -> str:
    """The address of `file_name` under a mirror's base address."""
    return mirror.rstrip("/") + "/" + urllib.parse.quote(file_name)


def download_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def _hasher(expected: str | None):
    """Keras publishes md5 (32 hex digits) for older files and sha256 (64) for newer ones."""
    if expected is None:
        return None
    return hashlib.sha256() if len(expected) == 64 else hashlib.md5()


def _file_digest(path: Path, expected: str) -> str:
    h = _hasher(expected)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_cached(path: Path, expected_hash: str | None, url: str) -> None:
    """Refuse a cached file whose hash is not the one Keras publishes (never deletes it: the
    user may have put it there)."""
    if expected_hash is None:
        return
    got = _file_digest(path, expected_hash)
    if got != expected_hash:
        algo = "sha256" if len(expected_hash) == 64 else "md5"
        raise DownloadError(
            f"{path} is not the file Keras publishes at {url} ({algo} {got}, expected {expected_hash}): "
            "damaged or a different file. Delete it to download it again, or pass your own file with "
            "--weights PATH"
        )


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no data for {timeout:g} s (timed out; {TIMEOUT_ENV} sets the limit)"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return f"no answer within {timeout:g} s (timed out; {TIMEOUT_ENV} sets the limit)"
        return f"cannot connect ({reason})"
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection dropped after {len(exc.partial)} bytes"
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return f"the connection failed ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _remove_stale_parts(folder: Path, file_name: str) -> None:
    """Temporaries of this file left by a killed download (called under the file's lock)."""
    for stale in folder.glob(f"{_PART}*-{file_name}"):
        try:
            stale.unlink()
            log.info("removed %s, left by an interrupted download", stale)
        except OSError:
            pass


def fetch(
    url: str,
    dest: Path,
    *,
    expected_hash: str | None = None,
    check: Callable[[Path], None] | None = None,
    timeout: float | None = None,
    progress: bool = True,
    hint: str = "",
) -> Path:
    """Download `url` to the file `dest` (atomically) unless it is already there; return `dest`.

    `expected_hash`: md5 or sha256 hex digest the file must have. `check(path)`: called on the
    complete temporary file before it is renamed into place; raising refuses the file.
    Raises :class:`DownloadError` (one line naming the file and the address, plus `hint`) on any
    failure; nothing is left under `dest`'s name or as a temporary.
    """
    from filelock import FileLock, Timeout
    from tqdm.auto import tqdm

    timeout = download_timeout() if timeout is None else timeout
    folder, name = dest.parent, dest.name

    def fail(why: str) -> DownloadError:
        return DownloadError(f"could not download {name} from {url}: {why}; nothing was saved" +
                             (f". {hint}" if hint else ""))

    lock = FileLock(str(folder / f".{name}.featx-lock"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=1)
        except Timeout:  # another process is downloading this file right now: wait for it
            log.info("waiting for another process downloading %s", dest)
            lock.acquire()
    except Timeout:
        raise
    except OSError as exc:
        raise fail(f"cannot write to the Keras cache {folder} ({exc})") from None
    try:
        if dest.is_file():  # another process finished it while we waited
            return dest
        _remove_stale_parts(folder, name)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=_PART, suffix=f"-{name}")
        tmp = Path(tmp_name)
        ok = False
        try:
            with os.fdopen(fd, "wb") as out:
                _stream(url, out, name, timeout, expected_hash, progress, fail, tqdm)
            _verify(tmp, url, expected_hash, fail)
            if check is not None:
                try:
                    check(tmp)
                except Exception as exc:
                    raise fail(f"the file does not load into the backbone ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
            replace_atomically(tmp, dest)  # the part was fsynced by _stream; this also fsyncs the folder
            ok = True
        finally:
            if not ok:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
    finally:
        lock.release()
    log.info("saved %s", dest)
    return dest


def _stream(url, out, name, timeout, expected_hash, progress, fail, tqdm) -> None:
    """Copy the body at `url` into the open file `out`; raise `fail(...)` on anything wrong."""
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise fail(_describe(exc, timeout)) from None
    with response:
        ctype = (response.headers.get("Content-Type") or "").lower()
        if "text/html" in ctype:
            raise fail(f"the server sent an HTML page (Content-Type {ctype}), not the weights file "
                       "(a proxy's login page or an error page?)")
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"featx: download {name}",
                   file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=False)
        try:
            while True:
                try:  # read1: what has arrived (up to a chunk), so a stall is timed from the last byte
                    block = response.read1(_CHUNK)
                except http.client.IncompleteRead as exc:
                    raise fail(f"the connection dropped after {received + len(exc.partial)} of "
                               f"{total if total is not None else '?'} bytes") from None
                except (OSError, http.client.HTTPException) as exc:
                    raise fail(_describe(exc, timeout) + f" after {received} bytes") from None
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
        finally:
            bar.close()
        if total is not None and received != total:
            raise fail(f"the connection dropped after {received} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())


def _verify(tmp: Path, url: str, expected_hash: str | None, fail) -> None:
    with open(tmp, "rb") as f:
        head = f.read(512)
    if not head:
        raise fail("the server sent an empty file")
    if not head.startswith(HDF5_MAGIC):
        if head.lstrip()[:1] == b"<":
            raise fail("the server sent an HTML/XML page, not the weights file (a proxy's login page or an "
                       "error page?)")
        raise fail("the file is not an HDF5 weights file")
    if expected_hash is not None:
        got = _file_digest(tmp, expected_hash)
        if got != expected_hash:
            algo = "sha256" if len(expected_hash) == 64 else "md5"
            raise fail(f"its {algo} is {got}, but Keras publishes {expected_hash} for this file "
                       "(a wrong or corrupted file)")


def _user_agent() -> str:
    try:
        from featx import __version__
    except Exception:  # pragma: no cover
        __version__ = "?"
    return f"featx/{__version__} (+keras.applications weights)"
