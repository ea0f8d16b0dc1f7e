"""One image file -> uint8 RGB pixels, or a recorded skip with a reason a person understands.

This package is the foundation of featx's input side. Users point featx at folders scraped from
anywhere, so every file is treated as hostile: it may be missing, empty, an HTML error page named
``.jpg``, cut short by an aborted download, a decompression bomb, or an image in an exotic colour
mode. :func:`decode_file` never raises for any of these; it returns a :class:`Decoded` whose
``skip`` says what was wrong, in a sentence.

It is deliberately light (numpy, Pillow and simplejpeg only, no keras/tensorflow) because it runs in worker
threads and spawned processes. It changes no global setting: it never sets
``ImageFile.LOAD_TRUNCATED_IMAGES``, never changes ``Image.MAX_IMAGE_PIXELS`` and never touches
``warnings`` filters, so many decodes can run side by side. (Pillow itself may still print
warnings, e.g. DecompressionBombWarning for an image just over the limit, or "Corrupt EXIF
data"; libtiff may write diagnostics to stderr.)

Where each job lives:

- ``files.py``: reading a file's bytes safely (no FIFO hangs, no directories), sha256, size/mtime.
- ``image.py``: :func:`open_rgb`, bytes -> upright RGB (EXIF, CMYK, 16-bit, alpha, JPEG DCT scaling).
- ``diagnose.py``: failures -> Skip records (bombs, out of memory, truncation, non-images).
- ``resize.py``: :func:`resize_rgb` and :func:`decode_array`, the resize Keras' loader does.
- ``outcome.py``: :class:`Decoded`, :class:`Skip`, :class:`DecodeError`.
- ``entry.py``: :func:`decode_file` and :func:`decode_deferred`, which tie the steps together.
"""

from featx.decode.entry import decode_deferred, decode_file
from featx.decode.files import read_bytes, sha256_bytes
from featx.decode.image import ALPHA_BACKGROUND, DEFAULT_MAX_PIXELS, open_rgb
from featx.decode.outcome import SKIP_KINDS, DecodeError, Decoded, Skip
from featx.decode.resize import decode_array, resize_rgb

__all__ = [
    "ALPHA_BACKGROUND",
    "DEFAULT_MAX_PIXELS",
    "SKIP_KINDS",
    "DecodeError",
    "Decoded",
    "Skip",
    "decode_array",
    "decode_deferred",
    "decode_file",
    "open_rgb",
    "read_bytes",
    "resize_rgb",
    "sha256_bytes",
]
