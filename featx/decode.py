"""One image file -> uint8 RGB pixels, or a recorded skip with a reason a person understands.

This module is the foundation of featx's input side. Users point featx at folders scraped from
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
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import os
import re
import stat
import struct
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, UnidentifiedImageError

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

SKIP_KINDS = (
    "missing",  # no such file, or a symlink whose target is gone
    "unreadable",  # exists, but the OS won't give us its bytes (directory, permission, I/O)
    "empty",  # zero bytes
    "not_an_image",  # bytes Pillow cannot identify as any image format (text, HTML, PDF, HEIC...)
    "truncated",  # a real image whose data ends early (aborted download, partial copy)
    "decompression_bomb",  # declared size too large to decode safely
    "too_small",  # width or height below 1 pixel
    "corrupt",  # an image format was recognised but its data is damaged
    "timeout",  # reading + decoding ran past the per-image time limit (set by featx.pipeline)
)

# Transparent areas are composited onto white: most web pages, image viewers and photo tools show
# transparent regions of PNG/GIF/WebP logos and product shots on white, so white is what the
# person who collected the images saw. A plain convert("RGB") just drops alpha and exposes
# whatever colour the transparent pixels happen to store (often black, sometimes garbage), which
# turns logos into black blobs and makes features depend on invisible data.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Pillow's own default (Image.MAX_IMAGE_PIXELS): about 89.5 megapixels, 0.25 GiB as 24-bit RGB.
DEFAULT_MAX_PIXELS = 89_478_485

# EXIF Orientation value -> the transpose that shows the image upright. The same table as
# PIL.ImageOps.exif_transpose; we apply it ourselves after the RGB conversion (see open_rgb).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Pillow registers its format plugins lazily, inside the first Image.open calls; threads doing
# their first open at the same moment can race on those registries (python-pillow/Pillow#7717)
# and a good image could come out "cannot identify". _init_pillow_once registers every plugin
# once, under a lock, before the first decode (not at import: importing stays side-effect free).
_PILLOW_INIT_LOCK = threading.Lock()
_PILLOW_READY = threading.Event()


def _init_pillow_once() -> None:
    if _PILLOW_READY.is_set():
        return
    with _PILLOW_INIT_LOCK:
        Image.init()
        _PILLOW_READY.set()


@dataclass(frozen=True)
class Skip:
    """Why a file yields no pixels: ``kind`` (one of SKIP_KINDS) and a human sentence."""

    kind: str
    detail: str

    def __post_init__(self) -> None:
        # A typo'd kind would silently break per-kind reporting downstream; fail where it is made.
        if self.kind not in SKIP_KINDS:
            raise ValueError(f"Skip kind must be one of {SKIP_KINDS}, got {self.kind!r}")

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


# eq=False: the generated __eq__ would compare ``pixels`` arrays with ==, which raises
# "truth value of an array is ambiguous"; identity equality is the honest choice here.
@dataclass(frozen=True, eq=False)
class Decoded:
    """The outcome of decoding one file: pixels, or a skip; plus the file's identity."""

    path: str
    sha256: str  # hex sha256 of the exact file bytes; "" when the file could not be read
    nbytes: int  # file size in bytes (-1 if unknown)
    mtime_ns: int  # os.stat mtime_ns (-1 if unknown)
    # uint8 (height, width, 3), C-contiguous. None when skipped, and also (with skip None) when
    # decode_file was told the content hash is already known (see known_hashes).
    pixels: np.ndarray | None
    skip: Skip | None
    # The file's bytes, only when decode_file's `defer` took the file for a batched decoder
    # (featx.gpudecode): pixels and skip are then None until decode_deferred or that decoder runs.
    encoded: bytes | None = None


class DecodeError(Exception):
    """Bad image data; ``.skip`` says what kind and why."""

    def __init__(self, skip: Skip) -> None:
        # Pass skip as the only arg so the exception pickles (processes) and unpickles intact.
        super().__init__(skip)
        self.skip = skip

    def __str__(self) -> str:
        return str(self.skip)


# --------------------------------------------------------------------------------------------
# Reading


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


# --------------------------------------------------------------------------------------------
# Decoding


def open_rgb(
    data: bytes,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode image bytes fully into an upright mode-"RGB" image; raise DecodeError for bad data.

    ``draft_size`` is (height, width), like every size in featx: for JPEGs, decode at the most
    reduced DCT scale (M/8, M = 1..8) that keeps the image at least this large. EXIF orientation
    is applied; every colour mode is converted properly (alpha onto ALPHA_BACKGROUND, 16-bit
    scaled, CMYK via its ICC profile). Multi-frame images give their first frame.
    """
    # Validate up front: a bad draft_size is a programming error, not a property of the file.
    draft_wh = None
    if draft_size is not None:
        dh, dw = _check_size(draft_size, "draft_size")
        draft_wh = (dw, dh)  # Pillow's draft takes (width, height)
    if not data:
        raise DecodeError(Skip("empty", "the file is empty (0 bytes)"))

    # Decode from the bytes already read: the file is read once, and the hash and the pixels
    # are guaranteed to come from the same bytes.
    _init_pillow_once()
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        # Pillow refuses images over 2 * Image.MAX_IMAGE_PIXELS inside Image.open itself, before
        # our own check can run; this also caps any max_pixels larger than that.
        raise DecodeError(_pillow_bomb_skip(e, data, max_pixels)) from None
    except UnidentifiedImageError:
        raise DecodeError(_unidentified_skip(data)) from None
    except MemoryError:
        raise DecodeError(_out_of_memory_skip(None, None)) from None
    except Exception as e:  # a plugin recognised the format but choked on the header
        if _signature_format(data) is None and _as_text(data[:4096]) is not None:
            # Weak magic (BMP's "BM", PPM's "P6", ...) matched the start of a text file.
            raise DecodeError(Skip("not_an_image", _describe_non_image(data))) from None
        raise DecodeError(_failure_skip(e, data, None)) from None

    fmt = img.format or "image"
    width, height = img.size
    # Check the declared size before anything is decoded: a 50 kB PNG can declare 20000x20000.
    if width * height > max_pixels:
        raise DecodeError(_bomb_skip(fmt, width, height, max_pixels))
    if width < 1 or height < 1:
        raise DecodeError(
            Skip("too_small", f"{fmt} is {width}\u00d7{height} pixels; it has no pixels to use")
        )

    if draft_wh is not None and img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
        rgb = _scaled_jpeg_rgb(data, img, draft_wh)
        if rgb is not None:
            return rgb

    try:
        img.seek(0)  # first frame of animated GIF/WebP/APNG and multi-page TIFF
        if draft_wh is not None and img.format in ("JPEG", "MPO"):
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale almost for free; draft picks the
            # strongest reduction that keeps both sides >= the request, so the later resize
            # still has enough pixels. A 12 MP photo at 1/8 decodes many times faster in 1/64
            # of the memory. (Mode "RGB" leaves CMYK and greyscale JPEGs in their own mode.)
            img.draft("RGB", draft_wh)
        img.load()
        orientation = _exif_orientation(img)
        rgb = _to_rgb(img)
        # Transpose after the RGB conversion: exif_transpose on the original would make an extra
        # full copy in the source mode, and TIFF EXIF lives in tags that convert() drops, which
        # is why the orientation was read above from the original image.
        method = _ORIENTATION_TRANSPOSE.get(orientation)
        if method is not None:
            rgb = rgb.transpose(method)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(
            Skip("decompression_bomb", f"too large to decode safely; Pillow refused it: {e}")
        ) from None
    except MemoryError:
        raise DecodeError(_out_of_memory_skip(fmt, img.size)) from None
    except Exception as e:  # OSError (truncated), SyntaxError, ValueError, struct.error, ...
        raise DecodeError(_failure_skip(e, data, fmt)) from None
    return rgb


def _scaled_jpeg_rgb(data: bytes, header: Image.Image, draft_wh: tuple[int, int]) -> Image.Image | None:
    """Decode a YCbCr or greyscale JPEG with libjpeg-turbo at the smallest M/8 scale (M = 1..8)
    that keeps both sides >= ``draft_wh``; None when libjpeg-turbo reports any problem.

    Pillow's draft only offers 1/2, 1/4 and 1/8, so a 500x375 photo bound for 224x224 decodes at
    full size and Pillow's (scalar) antialiased resize then does all the shrinking; at 5/8 the
    inverse DCT itself low-passes and shrinks the image, and the resize left has ~2.4x less to do.
    At the power-of-two scales the pixels are identical to Pillow's (same library, same islow
    IDCT and fancy upsampling). None makes the caller decode with Pillow instead, whose errors
    become featx's detailed skip reasons and which accepts the minor damage strict mode refuses.
    """
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=draft_wh[0], min_height=draft_wh[1], strict=True
        )
    except (ValueError, MemoryError):
        return None
    rgb = Image.fromarray(pixels)
    method = _ORIENTATION_TRANSPOSE.get(_exif_orientation(header))
    return rgb if method is None else rgb.transpose(method)


def _exif_orientation(img: Image.Image) -> int:
    """EXIF (or XMP) Orientation 1..8; 1 when absent, invalid or unreadable."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        # Damaged EXIF is common (phone apps, editors); it must not cost the user a good image.
        return 1
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to a correct mode-"RGB" image."""
    mode = img.mode
    if mode == "RGB" and not img.has_transparency_data:
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_bit_depth_to_rgb(img)
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode in ("La", "RGBa"):
        return _premultiplied_to_rgb(img)
    if img.has_transparency_data:
        # LA, PA, RGBA, P/L/RGB with a tRNS/GIF transparency entry, P with an RGBA palette.
        try:
            rgba = img.convert("RGBA")
        except ValueError:
            # A mode Pillow cannot give alpha for: better opaque than skipped.
            return img.convert("RGB")
        return _composite_on_background(rgba)
    # 1, L, P, RGBX, YCbCr, LAB, HSV: Pillow's conversions are correct for these.
    return img.convert("RGB")


def _composite_on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _premultiplied_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow cannot convert "La" at all, and RGBa -> RGB drops alpha onto black. Premultiplied
    # colour already is "colour over black", so compositing onto the background only needs
    # background * (1 - alpha) added.
    arr = np.asarray(img).astype(np.uint16)
    colour, alpha = arr[..., :-1], arr[..., -1:]
    bg = np.asarray(ALPHA_BACKGROUND if colour.shape[-1] == 3 else ALPHA_BACKGROUND[:1], np.uint16)
    out = colour + (bg * (255 - alpha) + 127) // 255
    out = np.minimum(out, 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(out))


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    # Pillow's own convert() of I;16 / I / F to L or RGB *clips* at 255, which turns nearly
    # every 16-bit photo or scan white. Scale the full range instead.
    arr = np.asarray(img)
    mode = img.mode
    if mode == "F":
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        # Float images in 0..1 are the usual convention (scientific/HDR tools); anything with
        # larger values is taken as already on the 0..255 scale.
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    else:
        # "I" is 32-bit signed; in practice it holds 16-bit data (older Pillow opened 16-bit PNGs
        # as "I"), so treat it as 16-bit range. v / 257 maps 65535 -> 255 exactly, and
        # (v + 128) // 257 is that division rounded to nearest (257 is odd: no ties).
        values = np.clip(arr.astype(np.int32), 0, 65535)  # int32: half the memory of int64
        grey = ((values + 128) // 257).astype(np.uint8)
    rgb = Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")
    transparency = img.info.get("transparency")
    if mode != "F" and isinstance(transparency, int):
        # 16-bit greyscale PNG tRNS: one raw value marks transparent pixels.
        alpha = np.where(arr == transparency, 0, 255).astype(np.uint8)
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        return _composite_on_background(rgba)
    return rgb


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    # Print-oriented CMYK JPEGs (Photoshop exports, stock sites) carry an ICC profile; the naive
    # formula Pillow's convert() uses gives visibly wrong, oversaturated colours for them.
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms  # needs Pillow built with littleCMS; optional

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                img, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if converted is not None and converted.mode == "RGB":
                return converted
        except Exception:
            # Broken or non-CMYK profile (or no littleCMS): the naive conversion is still far
            # better than skipping the image.
            pass
    return img.convert("RGB")


def _bomb_skip(fmt: str, width: int, height: int, limit: int) -> Skip:
    return Skip(
        "decompression_bomb",
        f"{fmt} declares {width}\u00d7{height} = {width * height:,} pixels, over the limit of "
        f"{limit:,}; decoding it could exhaust memory (possible decompression bomb)",
    )


def _pillow_bomb_skip(e: Exception, data: bytes, max_pixels: int) -> Skip:
    """Pillow's own refusal, said in featx's words: the declared size and the limit that applied.

    Pillow's message names its hard limit (2 x MAX_IMAGE_PIXELS), not featx's, which would read
    as a contradiction next to the documented limit.
    """
    hard = Image.MAX_IMAGE_PIXELS  # read only: Pillow refuses over twice this value
    limit = min(max_pixels, 2 * hard) if hard else max_pixels
    declared = _declared_size(data)
    if declared is not None and declared[1] * declared[2] > limit:  # our parse agrees with Pillow's
        return _bomb_skip(*declared, limit)
    m = re.search(r"\((\d+) pixels\)", str(e))
    what = f"{int(m.group(1)):,} pixels" if m else "more pixels than can be decoded safely"
    fmt = _signature_format(data) or "the image"
    return Skip(
        "decompression_bomb",
        f"{fmt} declares {what}, over the limit of {limit:,}; decoding it could exhaust memory "
        "(possible decompression bomb)",
    )


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (size inside)


def _declared_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the header bytes alone, for the common formats; else None.

    Only used to explain a refusal (Pillow does not hand out the size it refused).
    """
    try:
        fmt = _signature_format(data)
        if fmt == "PNG" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
        elif fmt == "GIF":
            w, h = struct.unpack("<HH", data[6:10])
        elif fmt == "BMP":
            if struct.unpack("<I", data[14:18])[0] == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
        elif fmt == "WebP" and data[12:16] == b"VP8X":
            w = 1 + int.from_bytes(data[24:27], "little")
            h = 1 + int.from_bytes(data[27:30], "little")
        elif fmt == "WebP" and data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            w, h = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
        elif fmt == "WebP" and data[12:16] == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            w, h = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        elif fmt == "JPEG":
            i = 2
            while i + 9 <= len(data) and data[i] == 0xFF:
                marker = data[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                elif marker in _JPEG_SOF:
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    break
                elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                    i += 2
                else:
                    i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
            else:
                return None
        else:
            return None
    except (struct.error, IndexError):
        return None
    w, h = abs(int(w)), abs(int(h))  # BMP stores bottom-up images with a negative height
    return (fmt, w, h) if w and h else None


def _out_of_memory_skip(fmt: str | None, size: tuple[int, int] | None) -> Skip:
    what = f"{fmt} of {size[0]}\u00d7{size[1]} pixels" if fmt and size else "image"
    return Skip(
        "decompression_bomb", f"ran out of memory decoding the {what}; too large to decode here"
    )


# --------------------------------------------------------------------------------------------
# Explaining failures


def _failure_skip(e: BaseException, data: bytes, fmt: str | None) -> Skip:
    """Classify an exception raised while opening/decoding recognisable image data."""
    label = fmt or _signature_format(data) or "image"
    msg = str(e) or "(no message)"
    low = msg.lower()
    # Only Pillow's explicit "truncated" messages prove an early end. "broken data stream" is
    # Pillow's generic decoder status (IMAGING_CODEC_BROKEN): in Pillow 13 a complete PNG whose
    # zlib data is garbage raises it too, so it counts as truncated only with structural
    # evidence (below), and as corrupt otherwise.
    if isinstance(e, OSError) and "truncated" in low:
        return Skip(
            "truncated",
            f"{label} data ends early (file truncated after {len(data):,} bytes): {msg}",
        )
    if isinstance(e, ValueError) and (
        "decompressed data too large" in low or "too much memory" in low
    ):
        # Pillow's guard against PNG text/ICC chunks that inflate to huge sizes.
        return Skip("decompression_bomb", f"{label} metadata expands too much: {msg}")
    evidence = _truncation_evidence(data)
    if evidence:
        return Skip(
            "truncated",
            f"{label} data ends early (file truncated after {len(data):,} bytes): {evidence}; "
            f"decoder said {type(e).__name__}: {msg}",
        )
    return Skip("corrupt", f"{label} data is damaged: {type(e).__name__}: {msg}")


# Magic numbers of the formats people actually scrape; used only to explain failures (after
# Pillow has given up), never to decide what to decode.
_SIGNATURES = (
    (b"\xff\xd8", "JPEG"),  # SOI marker; Pillow also wants the next marker (FF) to identify it
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_BMP_DIB_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)


def _signature_format(data: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    # "BM" alone would match text such as "BMW ..."; also require a known DIB header size.
    if data[:2] == b"BM" and len(data) >= 18:
        if struct.unpack("<I", data[14:18])[0] in _BMP_DIB_HEADER_SIZES:
            return "BMP"
    return None


def _signature_prefix(data: bytes) -> str | None:
    """Format whose signature this very short file is the beginning of (a cut-off download)."""
    if len(data) >= 3:
        for magic, name in _SIGNATURES:
            if len(data) < len(magic) and magic.startswith(data):
                return name
    return None


# Shortest possible header (signature + the chunk/fields that give the size) per format.
_MIN_HEADER_BYTES = {"PNG": 33, "GIF": 13, "BMP": 26, "TIFF": 8, "WebP": 20, "JPEG": 4}


def _truncation_evidence(data: bytes) -> str | None:
    """Cheap structural proof that a recognisable image file ends early, else None."""
    n = len(data)
    fmt = _signature_format(data)
    if fmt == "JPEG" and b"\xff\xd9" not in data[2:]:
        return "no JPEG end-of-image marker"
    if fmt == "PNG" and b"IEND" not in data:
        return "no PNG IEND chunk"
    if fmt == "WebP" and n >= 8:
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if declared > n:
            return f"its RIFF header declares {declared:,} bytes"
    if fmt == "BMP" and n >= 6:
        declared = struct.unpack("<I", data[2:6])[0]
        if declared > n:
            return f"its BMP header declares {declared:,} bytes"
    if fmt == "TIFF" and n >= 8:
        order = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", data[4:8])[0]
        if ifd >= n:
            return f"its first directory is at byte {ifd:,}, past the end"
    if fmt is not None and n < _MIN_HEADER_BYTES.get(fmt, 0):
        return f"only {n} bytes, shorter than any {fmt} header"
    return None


_HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def _unidentified_skip(data: bytes) -> Skip:
    """Skip for bytes Pillow cannot identify, saying what they look like when that is cheap."""
    prefix_of = _signature_prefix(data)
    if prefix_of is not None:
        return Skip(
            "truncated",
            f"only {len(data)} bytes, the start of a {prefix_of} signature: the file was cut short",
        )
    fmt = _signature_format(data)
    if fmt is not None:
        # It claims to be an image, so "not an image" would mislead; the header is unusable.
        evidence = _truncation_evidence(data)
        if evidence:
            return Skip(
                "truncated",
                f"{fmt} data ends early (file truncated after {len(data):,} bytes): {evidence}",
            )
        return Skip(
            "corrupt",
            f"starts like a {fmt} file but Pillow cannot read its header "
            f"({len(data):,} bytes; damaged or truncated)",
        )
    return Skip("not_an_image", _describe_non_image(data))


def _describe_non_image(data: bytes) -> str:
    head = data[:4096]
    ftyp_brand = head[8:12] if head[4:8] == b"ftyp" else b""
    binary_kinds = (
        (head.startswith(b"%PDF"), "a PDF document"),
        (head.startswith(b"PK\x03\x04"), "a ZIP archive (or a .docx/.xlsx/.epub)"),
        (head.startswith(b"\x1f\x8b"), "gzip-compressed data"),
        (head.startswith(b"Rar!"), "a RAR archive"),
        (head.startswith(b"7z\xbc\xaf"), "a 7-Zip archive"),
        (ftyp_brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"),
         "a HEIC/HEIF photo, which this Pillow cannot decode (convert it to JPEG, or install "
         "pillow-heif)"),
        (ftyp_brand in (b"avif", b"avis"), "an AVIF image this Pillow cannot decode"),
        (bool(ftyp_brand), "an MP4/MOV video or other ISO media file"),
        (head.startswith((b"\x00\x00\x00\x0cJXL ", b"\xff\x0a")),
         "a JPEG XL image, which this Pillow cannot decode"),
        (head.startswith(b"8BPS"), "a Photoshop PSD that Pillow could not open"),
        (head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3"), "MP3 audio"),
        (head.startswith(b"\x89HDF"), "an HDF5 file"),
        (head.startswith(b"\x7fELF"), "an executable program"),
        (head.startswith(b"MZ"), "a Windows executable"),
    )
    for matched, what in binary_kinds:
        if matched:
            return f"{_hex_start(data)} \u2014 {what}, not an image"

    text = _as_text(head)
    if text is None:
        return f"{_hex_start(data)} \u2014 unrecognised binary data, no image format Pillow knows"
    snippet = " ".join(text.split())[:40]
    low = text.lstrip().lower()
    if low.startswith("<!doctype html") or low.startswith("<html") or "<html" in low[:1024]:
        what = "an HTML page, not an image (often a saved error or login page)"
        title = _HTML_TITLE.search(head)
        if title:
            name = " ".join(title.group(1).decode("utf-8", "replace").split())[:60]
            if name:
                what += f"; its title is {name!r}"
    elif low.startswith("<svg") or (low.startswith("<?xml") and "<svg" in low):
        what = "an SVG vector drawing, which featx cannot rasterise"
    elif low.startswith("<?xml") or low.startswith("<"):
        what = "an XML/markup document, not an image"
    elif low.startswith(("{", "[")):
        what = "JSON or other text data, not an image"
    else:
        what = "plain text, not an image"
    return f"starts with {snippet!r} \u2014 {what}"


def _as_text(head: bytes) -> str | None:
    """The bytes as text when they look like text (UTF-8/UTF-16 with BOM), else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return head[: len(head) // 2 * 2].decode("utf-16", "ignore")
        except UnicodeDecodeError:
            return None
    sample = head[:1024]
    if b"\x00" in sample:
        return None
    try:
        # Strict UTF-8 (random binary fails it), but an incremental decoder so a sample cut
        # inside a multi-byte character is not held against it.
        text = codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        try:
            text = sample.decode("cp1252")  # legacy Western text (Windows-1252)
        except UnicodeDecodeError:
            return None
        # cp1252 maps almost every byte to some character, so also insist on mostly ASCII,
        # as real Western text is; binary is not.
        if sum(ch.isascii() for ch in text) < 0.8 * len(text):
            return None
    text = text.lstrip("\ufeff")
    if not text.strip():
        return None
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return text if printable / len(text) > 0.95 else None


def _hex_start(data: bytes) -> str:
    return "starts with bytes " + data[:8].hex(" ")


# --------------------------------------------------------------------------------------------
# Resizing and the public entry points


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
    except PermissionError as e:
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
