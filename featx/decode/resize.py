"""Resizing decoded RGB images to the model's input size, the same way Keras' own loader does.

:func:`decode_array` gives in-memory arrays exactly the resize that files get.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _check_size(size: tuple[int, int], name: str = "size") -> tuple[int, int]:
    """Validate a (height, width) pair of positive ints; return it as plain ints."""
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {size!r}") from None
    for v in (h, w):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be (height, width) of positive ints, got {size!r}")
    return int(h), int(w)


def resize_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize a mode-"RGB" image to ``size`` = (height, width); return uint8 (h, w, 3).

    Pillow BILINEAR, which antialiases when downscaling (its filter support widens with the
    scale factor) - the same call keras.utils.load_img makes, so features match Keras' pipeline.
    """
    h, w = _check_size(size)
    if img.mode != "RGB":
        raise ValueError(f"resize_rgb needs a mode 'RGB' image, got mode {img.mode!r}")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    # np.array copies: the result never aliases Pillow's buffer or the caller's image.
    pixels = np.array(img, dtype=np.uint8)
    return np.ascontiguousarray(pixels.reshape(h, w, 3))


def decode_array(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize in-memory uint8 RGB images exactly as decode_file resizes files.

    ``images``: (N, H, W, 3) or (H, W, 3) uint8. Returns (N, h, w, 3) uint8 for ``size`` =
    (h, w). Raises ValueError with the expected form for any other dtype or shape.
    """
    h, w = _check_size(size)
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        hint = (
            " (for floats in 0..1 use (x * 255).round().astype(np.uint8))"
            if arr.dtype.kind == "f"
            else ""
        )
        raise ValueError(f"images must be uint8 RGB in 0..255, got dtype {arr.dtype}{hint}")
    if arr.ndim == 3:
        arr = arr[np.newaxis]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            "images must have shape (N, height, width, 3) or (height, width, 3) (RGB), "
            f"got shape {np.shape(images)}"
        )
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"images must be at least 1\u00d71 pixels, got shape {np.shape(images)}")
    out = np.empty((arr.shape[0], h, w, 3), dtype=np.uint8)
    for i in range(arr.shape[0]):
        out[i] = resize_rgb(Image.fromarray(np.ascontiguousarray(arr[i])), (h, w))
    return out
