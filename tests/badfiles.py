"""Real test images - good ones in every awkward format and mode, and the bad files users have.

``make_bad_files(directory)`` writes one file per case and returns
``{filename: expected skip kind, or None for files that must decode}``. Everything is generated
here with Pillow/numpy (nothing downloaded, nothing from ../shared) in well under a second.

Constants below (colours, values) are what tests/test_decode.py checks decoded pixels against.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageDraw

# --- colours/values planted in the good files, checked by the tests ------------------------
CMYK_PATCHES = {  # CMYK ink value -> what the naive (no ICC profile) conversion must give
    "cyan": ((255, 0, 0, 0), (0, 255, 255)),
    "magenta": ((0, 255, 0, 0), (255, 0, 255)),
    "yellow": ((0, 0, 255, 0), (255, 255, 0)),
    "black": ((0, 0, 0, 255), (0, 0, 0)),
    "white": ((0, 0, 0, 0), (255, 255, 255)),
}
# cmyk_icc.jpg embeds a profile that deliberately swaps the cyan and yellow inks, so decoding it
# through the profile (and not Pillow's naive formula) turns the cyan patch yellow.
CMYK_ICC_EXPECTED = {
    "cyan": (255, 255, 0),
    "magenta": (255, 0, 255),
    "yellow": (0, 255, 255),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
GRAY16_VALUES = (0, 255, 32896, 65535)  # four vertical bands in gray16.png, left to right
GRAY16_EXPECTED = (0, 1, 128, 255)  # round(v / 257); Pillow's own convert would clip 255..->255
GIF_FRAME_COLOURS = ((220, 30, 30), (30, 200, 30))  # first frame red, second green
ALPHA_HALF_RED = (255, 0, 0, 128)  # rgba.png middle band: half-transparent red over white


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 RGB (height, width, 3) picture: smooth gradient plus a few shapes."""
    rng = np.random.default_rng(seed)
    # Broadcast a row of u and a column of v instead of full grids: 2000x1500 stays fast.
    u = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    v = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
    base = np.empty((height, width, 3), np.float32)
    base[..., 0] = 0.5 + 0.4 * np.sin(2.0 * u + phase[0]) * np.cos(1.5 * v)
    base[..., 1] = 0.5 + 0.4 * np.cos(1.7 * v + phase[1])
    base[..., 2] = 0.5 + 0.4 * np.sin(1.3 * (u + v) + phase[2])
    img = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        r = rng.uniform(0.08, 0.2) * min(width, height)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.rectangle((cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r), fill=colour)
    draw.line((0, 0, width - 1, height - 1), fill=(255, 255, 255), width=max(1, width // 40))
    return np.asarray(img).copy()


_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF",
    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
}


def make_good_image(
    path: str | os.PathLike, size: tuple[int, int] = (96, 72), seed: int = 0
) -> np.ndarray:
    """Write a photo-like RGB image to ``path`` (format from the suffix); return its pixels.

    ``size`` is (width, height) like Pillow's, so the default is a 96-wide, 72-high landscape.
    Different seeds give visibly different pictures. The returned array is what was *encoded*;
    for lossy formats (JPEG, default WebP) the decoded file differs slightly.
    """
    width, height = size
    pixels = scene(width, height, seed)
    fmt = _FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image suffix in {path!s}")
    kwargs = {"quality": 92} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(pixels).save(path, fmt, **kwargs)
    return pixels


# --- helpers for the unusual files ---------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png_bytes(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of width x height, tens of kB on disk, built without
    allocating the image (Pillow's mode "1" would take one byte per pixel: 400 MB)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits, all black
    comp = zlib.compressobj(1)  # level 1: 4x faster than 9, still ~0.2 MB
    rows_per_block = max(1, (1 << 20) // len(row))
    parts, left = [], height
    while left:
        n = min(rows_per_block, left)
        parts.append(comp.compress(row * n))
        left -= n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _srgb_to_icc_lab8(rgb: list[list[int]]) -> bytes:
    """sRGB colours -> ICC 8-bit Lab encoding (L 0..255 = 0..100, a/b offset by 128)."""
    im = Image.fromarray(np.asarray(rgb, np.uint8).reshape(1, -1, 3))
    srgb, lab_profile = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    t = ImageCms.buildTransform(srgb, lab_profile, "RGB", "LAB")
    lab = np.asarray(ImageCms.applyTransform(im, t)).reshape(-1, 3).copy()
    # Pillow's LAB mode stores a and b as signed bytes; the ICC lut8 encoding offsets them by 128.
    lab[:, 1:] = (lab[:, 1:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return lab.astype(np.uint8).tobytes()


def cmyk_icc_profile(swap_cyan_yellow: bool = True) -> bytes:
    """A small but real ICC v2 CMYK output profile (lut8 A2B0, CMYK -> Lab).

    ImageCms can only *create* sRGB/LAB/XYZ profiles, and no CMYK profile ships with the test
    machine, so we build one: a 2x2x2x2 CLUT whose corners are the simple subtractive model,
    with cyan and yellow inks swapped (by default) so a test can tell the profile was used.
    """
    corners = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    cc, yy = (y, c) if swap_cyan_yellow else (c, y)
                    corners.append([round(255 * (1 - ch) * (1 - k)) for ch in (cc, m, yy)])
    identity = bytes(range(256))
    lut = (
        b"mft1" + b"\0" * 4 + bytes([4, 3, 2, 0])
        + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
        + identity * 4 + _srgb_to_icc_lab8(corners) + identity * 3
    )
    text = b"featx test CMYK\0"
    # textDescriptionType: ASCII part, then empty Unicode (8 bytes) and ScriptCode (70) parts.
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 70
    wtpt = b"XYZ " + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    cprt = b"text" + b"\0" * 4 + b"public domain\0"
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", cprt), (b"A2B0", lut)]
    start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, blob in tags:
        body += b"\0" * (-(start + len(body)) % 4)  # tag data 4-byte aligned
        table += sig + struct.pack(">II", start + len(body), len(blob))
        body += blob
    body += b"\0" * (-len(body) % 4)
    header = (
        struct.pack(">I", start + len(body)) + b"\0" * 4 + bytes([2, 0x10, 0, 0])
        + b"prtr" + b"CMYK" + b"Lab " + b"\0" * 12 + b"acsp" + b"\0" * 28
        + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def _cmyk_patches_image() -> Image.Image:
    """CMYK image, 5 vertical 16-px-wide flat bands (16 px: whole JPEG blocks, little ringing)."""
    img = Image.new("CMYK", (80, 48))
    for i, (ink, _) in enumerate(CMYK_PATCHES.values()):
        img.paste(ink, (16 * i, 0, 16 * i + 16, 48))
    return img


def _exif_orientation_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


HTML_404 = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>404 Not Found</title></head>
<body><h1>Not Found</h1><p>The requested URL /images/cat_0413.png was not found on this server.</p>
<hr><address>nginx</address></body>
</html>
"""


def make_bad_files(directory: Path) -> dict[str, str | None]:
    """Write every test case into ``directory``; return {filename: expected skip kind or None}."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cases: dict[str, str | None] = {}

    def save(name: str, img: Image.Image, fmt: str, expected: str | None = None, **kw) -> None:
        img.save(d / name, fmt, **kw)
        cases[name] = expected

    # ---- good files -----------------------------------------------------------------------
    photo = Image.fromarray(scene(96, 72, seed=1))
    save("rgb.jpg", photo, "JPEG", quality=92)
    save("image.webp", photo, "WEBP", quality=90)
    save("image.tiff", photo, "TIFF")
    save("image.bmp", photo, "BMP")
    save("tiny_1x1.png", Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")

    save("cmyk.jpg", _cmyk_patches_image(), "JPEG", quality=95)
    save("cmyk_icc.jpg", _cmyk_patches_image(), "JPEG", quality=95, icc_profile=cmyk_icc_profile())

    # 16-bit greyscale: four bands of GRAY16_VALUES, 16 px each; Pillow writes/reads mode I;16.
    gray = np.repeat(np.asarray(GRAY16_VALUES, np.uint16), 16)[None, :].repeat(48, axis=0)
    save("gray16.png", Image.fromarray(np.ascontiguousarray(gray)), "PNG")
    # Same, big-endian 16-bit TIFF (mode I;16B).
    save("gray16b.tiff", Image.fromarray(np.ascontiguousarray(gray.astype(">u2"))), "TIFF")

    # Palette with a transparent index: left half index 0 (transparent), right half red.
    pal = Image.new("P", (64, 48), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (32, 0, 64, 48))
    save("palette_transparent.png", pal, "PNG", transparency=0)

    # LA: left half grey 100 opaque, right half black fully transparent.
    la = np.zeros((48, 64, 2), np.uint8)
    la[:, :32] = (100, 255)
    la[:, 32:] = (0, 0)
    save("la.png", Image.fromarray(la), "PNG")

    # RGBA: left third opaque blue, middle third half-transparent red, right third transparent.
    rgba = np.zeros((48, 66, 4), np.uint8)
    rgba[:, :22] = (0, 0, 255, 255)
    rgba[:, 22:44] = ALPHA_HALF_RED
    rgba[:, 44:] = (0, 255, 0, 0)  # colour under zero alpha must not leak through
    save("rgba.png", Image.fromarray(rgba), "PNG")

    # EXIF orientation 6 ("rotate 90 degrees clockwise to display"). The stored pixels are the
    # sideways sensor image; upright.* holds what a viewer shows. JPEG pair: the realistic camera
    # case, equal only within JPEG noise (dimensions are multiples of 16 so blocks line up).
    # PNG pair (eXIf chunk): lossless, so it must decode identically.
    upright = scene(96, 64, seed=2)  # display orientation: 96 wide, 64 high
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 64 wide, 96 high
    exif6 = _exif_orientation_bytes(6)
    save("exif_rotated.jpg", Image.fromarray(stored), "JPEG", quality=95, exif=exif6)
    save("upright.jpg", Image.fromarray(upright), "JPEG", quality=95)
    save("exif_rotated.png", Image.fromarray(stored), "PNG", exif=exif6)
    save("upright.png", Image.fromarray(upright), "PNG")

    frames = [Image.new("RGB", (64, 48), c) for c in GIF_FRAME_COLOURS]
    anim = {"save_all": True, "append_images": frames[1:], "duration": 100}
    frames[0].save(d / "animated.gif", "GIF", loop=0, **anim)
    cases["animated.gif"] = None
    frames[0].save(d / "animated.webp", "WEBP", lossless=True, **anim)
    cases["animated.webp"] = None

    make_good_image(d / "large.jpg", size=(2000, 1500), seed=3)
    cases["large.jpg"] = None

    # ---- bad files ------------------------------------------------------------------------
    buf = io.BytesIO()
    Image.fromarray(scene(320, 240, seed=4)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    cases["truncated.jpg"] = "truncated"

    buf = io.BytesIO()
    Image.fromarray(scene(320, 240, seed=5)).save(buf, "PNG")
    png = buf.getvalue()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    cases["truncated.png"] = "truncated"

    buf = io.BytesIO()
    Image.fromarray(scene(320, 240, seed=6)).save(buf, "WEBP", quality=80)
    webp = buf.getvalue()
    (d / "truncated.webp").write_bytes(webp[: len(webp) // 2])
    cases["truncated.webp"] = "truncated"

    # A PNG whose compressed pixel data is garbage but whose chunks are all present, CRCs valid.
    sig_ihdr = png[: 8 + 25]
    garbage = bytes(np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8))
    corrupt = sig_ihdr + _png_chunk(b"IDAT", garbage) + _png_chunk(b"IEND", b"")
    (d / "corrupt.png").write_bytes(corrupt)
    cases["corrupt.png"] = "corrupt"

    (d / "empty.jpg").write_bytes(b"")
    cases["empty.jpg"] = "empty"
    (d / "text.jpg").write_text("These are my holiday photos, see the list.\nbeach.jpg\n")
    cases["text.jpg"] = "not_an_image"
    (d / "error_page.png").write_bytes(HTML_404)
    cases["error_page.png"] = "not_an_image"
    (d / "bomb.png").write_bytes(bomb_png_bytes(20000, 20000))
    cases["bomb.png"] = "decompression_bomb"
    link = d / "broken_link.jpg"
    if os.path.lexists(link):  # allow regenerating into the same directory
        link.unlink()
    os.symlink(d / "does_not_exist.jpg", link)
    cases["broken_link.jpg"] = "missing"
    (d / "a_directory.jpg").mkdir(exist_ok=True)
    cases["a_directory.jpg"] = "unreadable"
    return cases


# --- variants of a real photo (tests/test_faults.py) ---------------------------------------
# How a camera stores an upright picture for each EXIF orientation, written from the EXIF spec
# with numpy (not from featx's own table, so a wrong table in featx cannot agree with itself).
# Stored pixels shown with the orientation applied give the upright picture again.
EXIF_STORED_FROM_UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=1),  # sensor rotated: view needs 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, k=-1),  # view needs 90 degrees counter-clockwise
}


def png_rgb16_bytes(rgb8: np.ndarray) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG holding ``rgb8 * 257`` (so 255 -> 65535).

    Pillow cannot write 16-bit RGB PNGs, which is what scanners and raw converters produce; the
    file is assembled here from its chunks.
    """
    h, w, _ = rgb8.shape
    wide = rgb8.astype(">u2") * 257
    raw = b"".join(b"\x00" + wide[y].tobytes() for y in range(h))  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(raw, 6)) + _png_chunk(b"IEND", b""))


def make_photo_variants(photo: np.ndarray, other: np.ndarray, directory: Path) -> dict[str, str | None]:
    """Write a real photo (uint8 RGB) in every awkward format and mode that must decode.

    Returns ``{filename: reference}``: the file whose features must be identical (a lossless
    variant of ``photo.png`` or ``grey.png``), or None when only "it decodes" can be asserted
    (lossy, quantised, or composited). ``other`` is a second photo (the animation's 2nd frame).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, str | None] = {}
    img = Image.fromarray(photo)
    img.save(d / "photo.png")
    out["photo.png"] = None
    img.save(d / "photo.tiff", "TIFF")
    out["photo.tiff"] = "photo.png"
    img.save(d / "photo_lossless.webp", "WEBP", lossless=True)
    out["photo_lossless.webp"] = "photo.png"
    img.save(d / "photo.webp", "WEBP", quality=85)
    out["photo.webp"] = None
    (d / "photo_rgb16.png").write_bytes(png_rgb16_bytes(photo))
    out["photo_rgb16.png"] = "photo.png"
    grey = img.convert("L")
    grey.save(d / "grey.png")
    out["grey.png"] = None
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(d / "grey16.png")
    out["grey16.png"] = "grey.png"
    img.convert("CMYK").save(d / "photo_cmyk.jpg", "JPEG", quality=95)
    out["photo_cmyk.jpg"] = None
    opaque = img.convert("RGBA")
    opaque.save(d / "photo_rgba_opaque.png")
    out["photo_rgba_opaque.png"] = "photo.png"
    rgba = np.asarray(opaque).copy()
    rgba[: rgba.shape[0] // 3, :, 3] = 0  # top third transparent (a cut-out product shot)
    rgba[rgba.shape[0] // 3 : rgba.shape[0] // 2, :, 3] = 128
    Image.fromarray(rgba).save(d / "photo_rgba.png")
    out["photo_rgba.png"] = None
    la = np.stack([np.asarray(grey), rgba[..., 3]], axis=-1)
    Image.fromarray(la).save(d / "photo_la.png")
    out["photo_la.png"] = None
    pal = img.quantize(255)  # index 255 stays free: the transparent one
    pal_arr = np.asarray(pal).copy()
    pal_arr[:, : pal_arr.shape[1] // 4] = 255
    pal_t = Image.fromarray(pal_arr, "P")
    pal_t.putpalette(pal.getpalette()[: 3 * 255] + [0, 255, 0])
    pal_t.save(d / "photo_palette_transparent.png", transparency=255)
    out["photo_palette_transparent.png"] = None
    # Animated GIF: first frame the photo (quantised), then another; the first frame is also
    # written as a lossless palette PNG, whose features the GIF must match exactly.
    frame0, frame1 = img.quantize(256), Image.fromarray(other).quantize(256)
    frame0.save(d / "photo_animated.gif", save_all=True, append_images=[frame1], duration=100, loop=0)
    frame0.save(d / "gif_frame0.png")
    out["photo_animated.gif"] = "gif_frame0.png"
    out["gif_frame0.png"] = None
    img.resize((1, 1), Image.Resampling.BOX).save(d / "photo_1x1.png")
    out["photo_1x1.png"] = None
    for orientation, stored_of in EXIF_STORED_FROM_UPRIGHT.items():
        stored = Image.fromarray(np.ascontiguousarray(stored_of(photo)))
        stored.save(d / f"exif_o{orientation}.png", exif=_exif_orientation_bytes(orientation))
        out[f"exif_o{orientation}.png"] = "photo.png"
    # The camera case: a JPEG stored sideways with orientation 6 next to an upright JPEG.
    img.save(d / "upright_photo.jpg", "JPEG", quality=95)
    out["upright_photo.jpg"] = None
    Image.fromarray(np.ascontiguousarray(EXIF_STORED_FROM_UPRIGHT[6](photo))).save(
        d / "exif_o6_photo.jpg", "JPEG", quality=95, exif=_exif_orientation_bytes(6))
    out["exif_o6_photo.jpg"] = None
    return out
