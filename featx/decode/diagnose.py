"""Turning a decode failure into a :class:`~featx.decode.outcome.Skip` a person understands.

Decompression bombs (with the size the header declares), running out of memory, proof that a file
was cut short, damaged data, and files that are no image at all (HTML error pages, PDFs, HEIC...).
File signatures are used only to explain a failure after Pillow has given up, never to decide
what to decode.
"""

from __future__ import annotations

import codecs
import re
import struct

from PIL import Image

from featx.decode.outcome import Skip


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
