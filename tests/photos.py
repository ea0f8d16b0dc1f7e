"""Real test photos that come with the test dependencies, so the suite runs from a bare clone.

Each class is one photograph shipped inside a package (scikit-image's ``skimage.data``,
scikit-learn's ``load_sample_images``); its images are distinct views of that photo, the way a
photographer's burst differs: a seeded random crop (45-90 % of the short side, aspect 3:4 to 4:3),
sometimes mirrored, a small exposure change, resized to about 128 px and saved as a JPEG at quality
80-95. Every image is a different file (different bytes, so a different content hash), every one is
a real photo's pixels, and the same (class, index) always gives the same bytes.

Files are written on first use into one folder per process and reused after that.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import shutil
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image


def _skimage(name: str):
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def _sklearn(name: str):
    from sklearn.datasets import load_sample_image

    return load_sample_image(name)


#: class name -> the packaged photograph its images are views of.
SOURCES = {
    "cat": lambda: _skimage("chelsea"),
    "coffee": lambda: _skimage("coffee"),
    "astronaut": lambda: _skimage("astronaut"),
    "rocket": lambda: _skimage("rocket"),
    "flower": lambda: _sklearn("flower.jpg"),
    "china": lambda: _sklearn("china.jpg"),
    "motorcycle": lambda: _skimage("motorcycle"),
}
CLASSES = tuple(SOURCES)

_lock = threading.Lock()
_folder: Path | None = None


@lru_cache(maxsize=None)
def _source(cls: str) -> np.ndarray:
    if cls not in SOURCES:
        raise KeyError(f"no test photo class {cls!r}; choose from {CLASSES}")
    return np.ascontiguousarray(SOURCES[cls]()[..., :3])


def source_photo(cls: str) -> np.ndarray:
    """The packaged photograph of class `cls` at its own resolution, uint8 (H, W, 3) RGB."""
    return _source(cls).copy()


def photo_bytes(cls: str, index: int) -> bytes:
    """JPEG bytes of view `index` of class `cls` (deterministic)."""
    src = _source(cls)
    seed = int.from_bytes(hashlib.sha256(f"{cls}/{index}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    h, w = src.shape[:2]
    side = rng.uniform(0.45, 0.9) * min(h, w)
    aspect = rng.uniform(0.75, 4 / 3)
    ch, cw = min(h, int(side / np.sqrt(aspect))), min(w, int(side * np.sqrt(aspect)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    view = src[top:top + ch, left:left + cw].astype(np.float32) * rng.uniform(0.85, 1.15)
    image = Image.fromarray(np.clip(view, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = int(rng.integers(112, 145))
    image = image.resize((out, int(round(out * ch / cw))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=int(rng.integers(80, 96)))
    return buf.getvalue()


def _cache_folder() -> Path:
    global _folder
    if _folder is None:
        _folder = Path(tempfile.mkdtemp(prefix="featx-test-photos-"))
        atexit.register(shutil.rmtree, _folder, True)
    return _folder


def photo_files(cls: str, n: int, offset: int = 0) -> list[Path]:
    """Paths of views offset … offset+n-1 of class `cls` (written on first use)."""
    paths = []
    with _lock:
        folder = _cache_folder() / cls
        folder.mkdir(exist_ok=True)
        for i in range(offset, offset + n):
            path = folder / f"{cls}_{i:04d}.jpg"
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(photo_bytes(cls, i))
                tmp.replace(path)
            paths.append(path)
    return paths
