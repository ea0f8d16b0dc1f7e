"""Where a backbone's weights come from: the Keras cache (``$KERAS_HOME/models``, under the file name
keras.applications uses), featx's vendored file, a download into that cache (featx.download: verified,
atomic, mirror, offline mode), a user's file, or seeded random weights when asked; and the sha256 of the
file, which is the fingerprint's identity of the weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from featx.registry import VENDORED_BACKBONE, VENDORED_DIR, BackboneSpec, get_spec
from featx.runtime import load_backend

if TYPE_CHECKING:
    from featx.config import BackboneConfig

log = logging.getLogger("featx")


class WeightsUnavailable(FileNotFoundError):
    """Pretrained weights cannot be had (offline mode, a failed or refused download, a missing file);
    the message says which file, from where, and how to provide it."""


def keras_cache_dir() -> Path:
    """Where keras.applications caches downloaded weights: $KERAS_HOME/models (default ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "imagenet", "file" or "none"
    path: Path | None  # the file that will be loaded (None for random weights)
    origin: str  # human description: "Keras cache", "vendored with featx", "downloaded from URL", "user file", "random"
    url: str | None = None  # the address the file was downloaded from in this process (None: not downloaded)

    def to_dict(self) -> dict:
        """Where the weights came from, for summaries (not part of the fingerprint: the same bytes
        from Keras' address, a mirror or a hand copy are the same weights, told by weights_sha256)."""
        return {"kind": self.kind, "origin": self.origin, "path": None if self.path is None else str(self.path),
                "url": self.url}


def find_imagenet_weights(spec: BackboneSpec) -> Path | None:
    """The ImageNet weights file for `spec` if it is available without a download, else None."""
    cached = keras_cache_dir() / spec.weights_file
    if cached.is_file():
        return cached
    if spec.vendored:
        vendored = VENDORED_DIR / spec.vendored
        if vendored.is_file():
            return vendored
    return None


def weights_download_url(spec: BackboneSpec, mirror: str | None = None) -> str:
    """Where `spec`'s ImageNet file would be downloaded from: the mirror (argument, else
    FEATX_WEIGHTS_MIRROR) serving Keras' file name, else keras.applications' own address."""
    from featx.download import mirror_url, weights_mirror

    base = weights_mirror(mirror)
    return mirror_url(base, spec.weights_file) if base else spec.weights_url


def _no_download_message(spec: BackboneSpec, why: str) -> str:
    cache = keras_cache_dir()
    return (
        f"ImageNet weights for backbone {spec.name!r} are not available {why}: the file "
        f"{spec.weights_file!r} is not in {cache}. Provide it in one of three ways: (1) copy "
        f"{spec.weights_file} (from {spec.weights_url}) into {cache} (set KERAS_HOME to use another Keras "
        f"cache); (2) set FEATX_WEIGHTS_MIRROR to a base address serving {spec.weights_file} (and leave "
        f"offline mode); (3) pass the file's path with --weights PATH (weights=PATH). "
        f"--backbone {VENDORED_BACKBONE} needs no download at all (its weights come with featx). "
        f"featx never falls back to random weights; use --weights none to ask for them explicitly."
    )


def _loads_into(spec: BackboneSpec):
    """A check for a downloaded file Keras publishes no hash for: it must load into the backbone."""

    def check(path: Path) -> None:
        load_backend()  # first import of the backend, without its native start-up chatter
        import keras

        size = max(spec.min_size, 64)
        net = getattr(keras.applications, spec.constructor)(
            include_top=False, weights=None, input_shape=(size, size, 3), **spec.kwargs)
        net.load_weights(str(path))

    return check


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None, *,
                    weights_mirror: str | None = None, offline: bool | None = None,
                    progress: bool = True) -> WeightsSource:
    """Turn the user's `weights` argument into a concrete local source, or explain what is missing.

    ``"imagenet"``: the Keras cache, else the vendored file, else a download into the Keras cache
    (from `weights_mirror` / FEATX_WEIGHTS_MIRROR, else Keras' address), verified before it is
    kept. `offline` (default: FEATX_OFFLINE) forbids the download: a missing file is then an error.
    """
    from featx.download import DownloadError, check_cached, fetch, offline_mode

    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random")):
        return WeightsSource("none", None, "random")
    if isinstance(weights, str) and weights.lower() == "imagenet":
        path = find_imagenet_weights(spec)
        if path is not None and path.parent == VENDORED_DIR:
            return WeightsSource("imagenet", path, "vendored with featx")
        if path is not None:
            try:
                _check_cached_once(str(path), spec.weights_hash, spec.weights_url, check_cached)
            except DownloadError as exc:
                raise WeightsUnavailable(str(exc)) from None
            return WeightsSource("imagenet", path, "Keras cache")
        if offline_mode(offline):
            raise WeightsUnavailable(_no_download_message(spec, "offline (FEATX_OFFLINE / --offline is on)"))
        url = weights_download_url(spec, weights_mirror)
        dest = keras_cache_dir() / spec.weights_file
        log.info("downloading ImageNet weights for %s (about %s MB) from %s into %s", spec.name,
                 spec.download_mb or "?", url, dest.parent)
        where = ("Check the mirror (FEATX_WEIGHTS_MIRROR)" if url != spec.weights_url else
                 f"Check the network or proxy (HTTPS_PROXY), set FEATX_WEIGHTS_MIRROR to a mirror serving "
                 f"{spec.weights_file}")
        hint = (f"{where}, or copy the file into {dest.parent}, or use --backbone {VENDORED_BACKBONE} "
                "(vendored: no download)")
        try:
            fetch(url, dest, expected_hash=spec.weights_hash,
                  check=None if spec.weights_hash else _loads_into(spec), progress=progress, hint=hint)
        except DownloadError as exc:
            raise WeightsUnavailable(str(exc)) from None
        return WeightsSource("imagenet", dest, f"downloaded from {url}", url=url)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"weights file {str(path)!r} does not exist (weights may be 'imagenet', 'none' or a path "
            "to a Keras weights file such as *_notop.h5 or *.weights.h5)"
        )
    return WeightsSource("file", path.resolve(), "user file")


_CHECKED: set[tuple] = set()


def _check_cached_once(path: str, expected: str | None, url: str, check_cached) -> None:
    """Hash a cached file against Keras' published hash once per process and file version."""
    if expected is None:
        return
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, expected)
    if key not in _CHECKED:
        check_cached(Path(path), expected, url)
        _CHECKED.add(key)


@lru_cache(maxsize=64)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: os.PathLike | str) -> str:
    st = os.stat(path)
    return _sha256_file_cached(str(path), st.st_size, st.st_mtime_ns)


def planned_weights(cfg: "BackboneConfig") -> WeightsSource | None:
    """The weights ``cfg.build()`` would load, resolved as build does (Keras cache, vendored file, a
    path), if that needs neither a download nor Keras; None otherwise (random weights, a missing or
    damaged file: build then downloads or gives its own error)."""
    if cfg.weights is None or str(cfg.weights).lower() in ("none", "random"):
        return None  # random weights are only known once the seeded model is built
    spec = get_spec(cfg.name)
    try:
        source = resolve_weights(spec, cfg.weights, offline=True, progress=False)
    except WeightsUnavailable:
        return None
    if spec.vendored and source.path.parent == VENDORED_DIR and sha256_file(source.path) != spec.vendored_sha256:
        return None  # damaged: build says so
    return source
