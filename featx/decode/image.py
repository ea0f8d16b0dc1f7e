"""Image bytes -> an upright mode-"RGB" Pillow image, whatever the format and colour mode.

EXIF orientation, alpha composited onto :data:`ALPHA_BACKGROUND`, 16-bit and float images scaled
(not clipped), CMYK through its ICC profile, premultiplied alpha, and JPEGs decoded at a reduced
DCT scale when a smaller size is all that is needed. Bad data raises DecodeError.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, UnidentifiedImageError

from featx.decode.diagnose import (
    _as_text,
    _bomb_skip,
    _describe_non_image,
    _failure_skip,
    _out_of_memory_skip,
    _pillow_bomb_skip,
    _signature_format,
    _unidentified_skip,
)
from featx.decode.outcome import DecodeError, Skip
from featx.decode.resize import _check_size

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
    img = _open_header(data, max_pixels)
    if draft_wh is not None and img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L"):
        rgb = _scaled_jpeg_rgb(data, img, draft_wh)
        if rgb is not None:
            return rgb
    return _load_upright_rgb(img, data, draft_wh)


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """Open ``data`` with Pillow, reading the header only; refuse sizes out of bounds."""
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
    return img


def _load_upright_rgb(img: Image.Image, data: bytes, draft_wh: tuple[int, int] | None) -> Image.Image:
    """Decode the opened ``img`` (first frame) to upright RGB; its failures become DecodeError."""
    fmt = img.format or "image"
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
