"""featx.decode: every file gives correct RGB pixels of the requested size, or a clear Skip."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import multiprocessing
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import featx.decode.files as decode_files
import featx.decode.image as decode_image
from featx.decode import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    SKIP_KINDS,
    DecodeError,
    Decoded,
    Skip,
    decode_array,
    decode_deferred,
    decode_file,
    open_rgb,
    read_bytes,
    resize_rgb,
    sha256_bytes,
)

sys.path.insert(0, str(Path(__file__).parent))
import badfiles  # noqa: E402  (tests/ is not a package; conftest.py belongs to someone else)
import conftest  # noqa: E402  (the fast tier tries fewer fuzz examples: conftest.examples)

SIZE = (224, 224)

# The contract with badfiles.make_bad_files: these names with these outcomes (None = decodes).
GOOD = [
    "rgb.jpg", "cmyk.jpg", "cmyk_icc.jpg", "gray16.png", "gray16b.tiff",
    "palette_transparent.png", "la.png", "rgba.png", "exif_rotated.jpg", "upright.jpg",
    "exif_rotated.png", "upright.png", "animated.gif", "animated.webp", "image.webp",
    "image.tiff", "image.bmp", "tiny_1x1.png", "large.jpg",
]
BAD = {
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "truncated.webp": "truncated",
    "corrupt.png": "corrupt",
    "empty.jpg": "empty",
    "text.jpg": "not_an_image",
    "error_page.png": "not_an_image",
    "bomb.png": "decompression_bomb",
    "broken_link.jpg": "missing",
    "a_directory.jpg": "unreadable",
}
# Good files made of a few flat colour bands (so colours can be checked exactly).
FLAT_PATCHES = {
    "cmyk.jpg", "cmyk_icc.jpg", "gray16.png", "gray16b.tiff", "palette_transparent.png",
    "la.png", "rgba.png",
}
NO_BYTES = {"broken_link.jpg", "a_directory.jpg"}  # nothing could be read, so no hash


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    d = tmp_path_factory.mktemp("decode_cases")
    return d, badfiles.make_bad_files(d)


@pytest.fixture(scope="module")
def fdir(files) -> Path:
    return files[0]


def decode_native(path: Path) -> np.ndarray:
    """Decode at the file's own (upright) size, so no resize blurs the checked colours."""
    w, h = open_rgb(path.read_bytes()).size  # upright size (EXIF applied)
    d = decode_file(path, (h, w))
    assert d.skip is None, d.skip
    return d.pixels


def close(pixel, expected, tol: int) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(expected, int)) <= tol))


# ---------------------------------------------------------------------------------------------
# The generated cases


def test_make_bad_files_returns_the_contracted_cases(files):
    d, cases = files
    expected = {**{n: None for n in GOOD}, **BAD}
    assert {n: cases.get(n, "<absent>") for n in expected} == expected
    for name in cases:
        assert os.path.lexists(d / name), name
    assert (d / "broken_link.jpg").is_symlink() and not (d / "broken_link.jpg").exists()
    assert (d / "bomb.png").stat().st_size < 1_000_000  # a bomb is small on disk


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_gives_its_skip(fdir, name):
    path = fdir / name
    d = decode_file(path, SIZE)
    assert isinstance(d, Decoded)
    assert d.pixels is None
    assert d.skip is not None and d.skip.kind == BAD[name], d.skip
    assert d.skip.detail.strip()
    assert str(d.skip) == f"{d.skip.kind}: {d.skip.detail}"
    assert d.path == str(path)
    if name in NO_BYTES:
        assert d.sha256 == "" and d.nbytes == -1
    else:
        data = path.read_bytes()
        assert d.sha256 == hashlib.sha256(data).hexdigest()
        assert d.nbytes == len(data)
        assert d.mtime_ns == path.stat().st_mtime_ns


def test_bad_file_details_are_specific(fdir):
    detail = {n: decode_file(fdir / n, SIZE).skip.detail for n in BAD}
    assert "HTML page" in detail["error_page.png"]
    assert "404 Not Found" in detail["error_page.png"]
    assert "<!DOCTYPE html" in detail["error_page.png"]
    assert "plain text" in detail["text.jpg"] and "holiday photos" in detail["text.jpg"]
    assert "ends early" in detail["truncated.jpg"] and "JPEG" in detail["truncated.jpg"]
    assert "ends early" in detail["truncated.png"] and "PNG" in detail["truncated.png"]
    assert "RIFF" in detail["truncated.webp"]
    # Pillow refuses this one itself; the reason still gives the size and featx's limit
    assert "PNG declares 20000\u00d720000 = 400,000,000 pixels" in detail["bomb.png"]
    assert "limit of 89,478,485" in detail["bomb.png"]
    assert "does_not_exist.jpg" in detail["broken_link.jpg"]
    assert "directory" in detail["a_directory.jpg"]
    assert "0 bytes" in detail["empty.jpg"]
    assert "OSError" in detail["corrupt.png"]


@pytest.mark.parametrize("name", GOOD)
def test_good_file_decodes_to_224(fdir, name):
    path = fdir / name
    d = decode_file(path, SIZE)
    assert d.skip is None, d.skip
    px = d.pixels
    assert isinstance(px, np.ndarray) and px.dtype == np.uint8 and px.shape == (224, 224, 3)
    assert px.flags.c_contiguous
    data = path.read_bytes()
    assert d.sha256 == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    assert d.nbytes == len(data)
    assert d.mtime_ns == path.stat().st_mtime_ns
    if name == "tiny_1x1.png":
        assert np.all(px == (10, 200, 30))  # 1x1 is a valid image, upscaled uniformly
    elif name in ("animated.gif", "animated.webp"):
        assert np.all(px == badfiles.GIF_FRAME_COLOURS[0])  # a flat first frame
    else:
        assert px.std() > 10  # not one value: real content made it through
        if name not in FLAT_PATCHES:  # photo-like: a smooth gradient gives many colours
            assert len(np.unique(px.reshape(-1, 3), axis=0)) > 500


def test_known_hashes_are_hashed_but_not_decoded(fdir):
    first = decode_file(fdir / "rgb.jpg", SIZE)
    again = decode_file(fdir / "rgb.jpg", SIZE, known_hashes={first.sha256})
    assert again.pixels is None and again.skip is None
    assert again.sha256 == first.sha256
    assert (again.nbytes, again.mtime_ns) == (first.nbytes, first.mtime_ns)
    other = decode_file(fdir / "image.bmp", SIZE, known_hashes={first.sha256})
    assert other.pixels is not None
    # Only known content is passed over: a bad file (its hash unknown) is still reported.
    bad = decode_file(fdir / "truncated.jpg", SIZE, known_hashes={first.sha256})
    assert bad.skip.kind == "truncated"


def test_non_square_size_is_height_width(fdir):
    d = decode_file(fdir / "rgb.jpg", (100, 150))
    assert d.pixels.shape == (100, 150, 3)


# ---------------------------------------------------------------------------------------------
# Colour modes


@pytest.mark.parametrize("name, expected", [("cmyk.jpg", None), ("cmyk_icc.jpg", None)])
def test_cmyk_colours(fdir, name, expected):
    px = decode_native(fdir / name)
    assert px.shape == (48, 80, 3)
    wanted = (
        {k: rgb for k, (_, rgb) in badfiles.CMYK_PATCHES.items()}
        if name == "cmyk.jpg"
        else badfiles.CMYK_ICC_EXPECTED
    )
    for i, key in enumerate(badfiles.CMYK_PATCHES):
        centre = px[24, 16 * i + 8]
        assert close(centre, wanted[key], 16), (name, key, centre.tolist())


def test_cmyk_icc_profile_is_used_not_the_naive_formula(fdir):
    # Cyan ink: naive convert gives cyan, the embedded (cyan<->yellow) profile gives yellow.
    cyan_patch = decode_native(fdir / "cmyk_icc.jpg")[24, 8]
    assert close(cyan_patch, (255, 255, 0), 16) and not close(cyan_patch, (0, 255, 255), 60)


def test_cmyk_with_broken_icc_profile_falls_back_to_naive(tmp_path):
    img = Image.new("CMYK", (32, 32), (255, 0, 0, 0))
    img.save(tmp_path / "bad_icc.jpg", "JPEG", quality=95, icc_profile=b"not an icc profile" * 10)
    px = decode_file(tmp_path / "bad_icc.jpg", (32, 32)).pixels
    assert close(px[16, 16], (0, 255, 255), 16)


def test_gray16_scaled_not_clipped(fdir):
    with Image.open(fdir / "gray16.png") as im:
        assert im.mode in ("I;16", "I")  # Pillow 13 opens 16-bit grey PNG as I;16
        assert np.asarray(im).max() == 65535
    for name in ("gray16.png", "gray16b.tiff"):
        px = decode_native(fdir / name)
        assert px.shape == (48, 64, 3)
        for band, want in enumerate(badfiles.GRAY16_EXPECTED):
            assert np.all(px[:, 16 * band : 16 * band + 16] == want), (name, band)


def _tiff_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()


def test_32bit_int_and_float_modes():
    ints = np.array([[-5, 0, 255, 32896, 65535, 70000]], dtype=np.int32)
    rgb = np.asarray(open_rgb(_tiff_bytes(Image.fromarray(ints))))
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 128, 255, 255]

    unit = np.array([[0.0, 0.25, 0.5, 1.0, -0.5]], dtype=np.float32)  # max <= 1: 0..1 scale
    rgb = np.asarray(open_rgb(_tiff_bytes(Image.fromarray(unit))))
    assert rgb[0, :, 0].tolist() == [0, 64, 128, 255, 0]

    big = np.array([[0.0, 100.4, 254.6, 300.0, np.nan]], dtype=np.float32)  # 0..255 scale
    rgb = np.asarray(open_rgb(_tiff_bytes(Image.fromarray(big))))
    assert rgb[0, :, 0].tolist() == [0, 100, 255, 255, 0]
    assert np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2])


def test_palette_transparency_becomes_white(fdir):
    assert ALPHA_BACKGROUND == (255, 255, 255)
    px = decode_native(fdir / "palette_transparent.png")
    assert np.all(px[:, :32] == ALPHA_BACKGROUND)
    assert np.all(px[:, 32:] == (255, 0, 0))


def test_la_alpha_onto_white(fdir):
    px = decode_native(fdir / "la.png")
    assert np.all(px[:, :32] == 100)
    assert np.all(px[:, 32:] == 255)


def test_rgba_alpha_onto_white(fdir):
    px = decode_native(fdir / "rgba.png")
    assert np.all(px[:, :22] == (0, 0, 255))
    half = px[:, 22:44]
    assert np.all(half[..., 0] == 255) and np.all(np.abs(half[..., 1:].astype(int) - 127) <= 1)
    assert np.all(px[:, 44:] == 255)  # fully transparent: white, the hidden green ignored


ORANGE = (200, 100, 50)


@pytest.mark.parametrize(
    "mode, make, expected, tol",
    [
        ("1", lambda: Image.new("1", (8, 8), 1), (255, 255, 255), 0),
        ("L", lambda: Image.new("L", (8, 8), 77), (77, 77, 77), 0),
        ("P", lambda: Image.new("RGB", (8, 8), ORANGE).convert("P"), ORANGE, 8),
        ("PA", lambda: Image.new("RGBA", (8, 8), (9, 9, 9, 0)).convert("PA"), (255, 255, 255), 0),
        ("YCbCr", lambda: Image.new("RGB", (8, 8), (200, 100, 50)).convert("YCbCr"), ORANGE, 2),
        ("LAB", lambda: Image.new("RGB", (8, 8), ORANGE).convert("LAB"), ORANGE, 2),
        ("CMYK", lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), (255, 0, 0), 0),
        ("I;16L", lambda: Image.fromarray(np.full((8, 8), 32896, "<u2")), (128, 128, 128), 0),
    ],
)
def test_file_modes_via_tiff(mode, make, expected, tol):
    img = make()
    data = _tiff_bytes(img)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode in (mode, "I;16")  # TIFF keeps the mode (I;16L is read as I;16)
    rgb = open_rgb(data)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    assert close(np.asarray(rgb)[4, 4], expected, tol), np.asarray(rgb)[4, 4].tolist()


@pytest.mark.parametrize(
    "img, expected",
    [
        # Modes no common file format stores; exercised on the converter directly.
        (Image.new("HSV", (4, 4), (0, 255, 255)), (255, 0, 0)),
        (Image.fromarray(np.full((4, 4, 4), (100, 0, 0, 128), np.uint8)).convert("RGBa"), None),
        (Image.new("RGBX", (4, 4), (1, 2, 3, 0)), (1, 2, 3)),
    ],
)
def test_rare_modes_converter(img, expected):
    rgb = decode_image._to_rgb(img)
    assert rgb.mode == "RGB"
    px = np.asarray(rgb)[1, 1]
    if img.mode == "RGBa":
        # premultiplied red 100*128/255=50, alpha 128 -> 50 + 255*(127/255) = 177 in red;
        # white shows through in green and blue: 0 + 127.
        assert close(px, (177, 127, 127), 1), px.tolist()
    else:
        assert close(px, expected, 1), px.tolist()


def test_premultiplied_la_converter():
    img = Image.frombytes("La", (4, 4), np.full((4, 4, 2), (40, 0), np.uint8).tobytes())
    assert np.all(np.asarray(decode_image._to_rgb(img)) == 255)
    img = Image.frombytes("La", (4, 4), np.full((4, 4, 2), (40, 255), np.uint8).tobytes())
    assert np.all(np.asarray(decode_image._to_rgb(img)) == 40)


@pytest.mark.parametrize(
    "img, transparency",
    [
        (Image.new("RGB", (4, 4), (0, 255, 0)), (0, 255, 0)),  # truecolour PNG tRNS
        (Image.new("L", (4, 4), 60), 60),  # 8-bit grey PNG tRNS
    ],
    ids=["rgb-trns", "l-trns"],
)
def test_png_single_colour_transparency_onto_white(img, transparency):
    img.paste(img.getpixel((0, 0)) if img.mode == "RGB" else 0, (0, 0, 2, 4))
    if img.mode == "RGB":
        img.paste((10, 20, 30), (2, 0, 4, 4))
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=transparency)
    rgb = np.asarray(open_rgb(buf.getvalue()))
    if img.mode == "RGB":
        assert np.all(rgb[:, :2] == 255) and np.all(rgb[:, 2:] == (10, 20, 30))
    else:
        assert np.all(rgb[:, :2] == 0) and np.all(rgb[:, 2:] == 255)


def test_sixteen_bit_grey_transparency_onto_white():
    arr = np.array([[1000, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=1000)
    rgb = np.asarray(open_rgb(buf.getvalue()))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [255, 255, 255]  # opaque white pixel stays white
    arr[0, 1] = 32896
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", transparency=1000)
    assert np.asarray(open_rgb(buf.getvalue()))[0, 1].tolist() == [128, 128, 128]


# ---------------------------------------------------------------------------------------------
# Orientation, frames, draft


def test_exif_rotated_png_equals_upright_exactly(fdir):
    a = decode_file(fdir / "exif_rotated.png", SIZE).pixels
    b = decode_file(fdir / "upright.png", SIZE).pixels
    assert np.array_equal(a, b)
    native = decode_native(fdir / "exif_rotated.png")
    assert native.shape == (64, 96, 3)  # stored 64 wide x 96 high, shown 96 wide x 64 high
    assert np.array_equal(native, decode_native(fdir / "upright.png"))


def test_exif_rotated_jpeg_equals_upright_within_jpeg_noise(fdir):
    a = decode_file(fdir / "exif_rotated.jpg", (64, 96)).pixels.astype(int)
    b = decode_file(fdir / "upright.jpg", (64, 96)).pixels.astype(int)
    assert np.abs(a - b).mean() < 3
    # ...and the rotation really happened: the stored (sideways) pixels squeezed into the same
    # box are far from the upright picture.
    with Image.open(fdir / "exif_rotated.jpg") as im:
        sideways = im.convert("RGB").resize((96, 64), Image.Resampling.BILINEAR)
    sideways = np.asarray(sideways).astype(int)
    assert np.abs(sideways - b).mean() > 10


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns "Corrupt EXIF data"
def test_damaged_or_invalid_exif_does_not_cost_the_image(tmp_path, monkeypatch):
    img = Image.fromarray(badfiles.scene(64, 48, seed=9))
    bad_orientation = Image.Exif()
    bad_orientation[0x0112] = 9  # not a valid orientation: ignored
    garbage = b"Exif\x00\x00MM\x00*\x00\x00\xff\xff\xff\x00garbage"
    for i, exif in enumerate([garbage, bad_orientation.tobytes()]):
        img.save(tmp_path / f"bad_exif{i}.jpg", "JPEG", exif=exif)
        d = decode_file(tmp_path / f"bad_exif{i}.jpg", (48, 64))
        assert d.skip is None, d.skip
    # EXIF parsing that blows up inside Pillow: still decoded, just not rotated.
    def explode(self):
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(Image.Image, "getexif", explode)
    assert decode_file(tmp_path / "bad_exif0.jpg", (48, 64)).skip is None


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp"])
def test_animation_gives_first_frame(fdir, name):
    with Image.open(fdir / name) as im:
        assert getattr(im, "n_frames", 1) >= 2
    px = decode_file(fdir / name, SIZE).pixels
    assert np.all(px == badfiles.GIF_FRAME_COLOURS[0])


def test_gif_first_frame_transparency_onto_white(tmp_path):
    frame0 = Image.new("P", (16, 16), 1)
    frame0.putpalette([0, 0, 0, 220, 30, 30, 30, 200, 30] + [0] * 759)
    frame0.paste(0, (0, 0, 8, 16))  # left half index 0 = transparent
    frame1 = frame0.copy()
    frame1.paste(2, (0, 0, 16, 16))
    frame0.save(tmp_path / "t.gif", save_all=True, append_images=[frame1], transparency=0)
    px = decode_file(tmp_path / "t.gif", (16, 16)).pixels
    assert np.all(px[:, :8] == 255) and np.all(px[:, 8:] == (220, 30, 30))


def test_draft_decode_of_large_jpeg_matches_full_decode(fdir):
    data = (fdir / "large.jpg").read_bytes()
    drafted = open_rgb(data, draft_size=SIZE)
    assert drafted.size == (500, 375)  # 2000x1500 at DCT scale 1/4: still >= 224 both ways
    full = resize_rgb(open_rgb(data), SIZE).astype(int)
    via_file = decode_file(fdir / "large.jpg", SIZE).pixels.astype(int)
    diff = np.abs(full - via_file)
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8


def test_jpeg_decodes_at_eighths_scale_close_to_full_decode(tmp_path):
    # A real photo as a 500x375 JPEG: Pillow's draft has only halves (1/2 gives 250x188 < 224),
    # libjpeg-turbo's 5/8 gives 313x235 and leaves the resize far less to do.
    from photos import source_photo

    photo = Image.fromarray(source_photo("coffee")[:375, :500])  # 600x400 camera pixels, not upscaled
    photo.save(tmp_path / "p.jpg", "JPEG", quality=90)
    data = (tmp_path / "p.jpg").read_bytes()
    assert open_rgb(data, draft_size=SIZE).size == (313, 235)
    full = resize_rgb(open_rgb(data), SIZE).astype(int)
    scaled = decode_file(tmp_path / "p.jpg", SIZE).pixels.astype(int)
    diff = np.abs(full - scaled)
    # Camera-resolution pixels (sharp edges, not an upscaled thumbnail): the DCT-domain downscale
    # differs from decode-then-resize at edges; measured mean 3.1, 99th percentile 29, and the
    # vendored MobileNet's features of the two agree to cosine 0.997. A one-pixel shift of the full
    # decode is more than twice as far off (mean 7.4): the bound still tells a right decode from a
    # misplaced one.
    assert 0 < diff.mean() < 3.5 and np.percentile(diff, 99) <= 32
    assert diff.mean() < 0.5 * np.abs(full - np.roll(full, 1, axis=1)).mean()


def test_power_of_two_scales_give_pillows_pixels_exactly(fdir):
    data = (fdir / "large.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (224, 224))
        pillow = np.asarray(im.convert("RGB"))
    assert pillow.shape == (375, 500, 3)
    assert np.array_equal(np.asarray(open_rgb(data, draft_size=SIZE)), pillow)


def test_jpeg_that_libjpeg_turbo_strictly_refuses_still_decodes_through_pillow(fdir):
    # Damaged entropy data: libjpeg-turbo only warns ("Corrupt JPEG data"), simplejpeg's strict
    # mode refuses, and Pillow (which ignores libjpeg warnings) still gives the picture.
    data = bytearray((fdir / "large.jpg").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff\xd9" * 32
    data = bytes(data)
    with pytest.raises(ValueError):
        import simplejpeg

        simplejpeg.decode_jpeg(data, min_width=224, min_height=224, strict=True)
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (224, 224))
        pillow = np.asarray(im.convert("RGB"))
    assert np.array_equal(np.asarray(open_rgb(data, draft_size=SIZE)), pillow)


def test_draft_keeps_cmyk_and_grey_jpegs_correct():
    for img, expected in [
        (Image.new("CMYK", (800, 600), (255, 0, 0, 0)), (0, 255, 255)),
        (Image.new("L", (800, 600), 77), (77, 77, 77)),
    ]:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95, progressive=img.mode == "L")
        rgb = open_rgb(buf.getvalue(), draft_size=(100, 100))
        assert rgb.mode == "RGB" and rgb.size == (200, 150)  # scale 1/4
        assert close(np.asarray(rgb)[75, 100], expected, 3)


def test_draft_is_only_for_jpeg(fdir):
    data = (fdir / "image.tiff").read_bytes()
    assert open_rgb(data, draft_size=(8, 8)).size == (96, 72)


# ---------------------------------------------------------------------------------------------
# Limits and unusual paths


def test_max_pixels_limit_is_inclusive_and_reports_dimensions(fdir):
    path = fdir / "rgb.jpg"  # 96 x 72 = 6912 pixels
    assert decode_file(path, SIZE, max_pixels=6912).skip is None
    d = decode_file(path, SIZE, max_pixels=6911)
    assert d.skip.kind == "decompression_bomb"
    assert "96\u00d772" in d.skip.detail and "6,911" in d.skip.detail
    assert d.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert DEFAULT_MAX_PIXELS == 89_478_485 == Image.MAX_IMAGE_PIXELS  # untouched globally


def _with_declared_size(fmt: str, w: int, h: int) -> bytes:
    """A small real file whose header is patched to declare w x h (the pixel data stays small)."""
    img = Image.fromarray(badfiles.scene(64, 48, seed=3))
    if fmt == "JPEG":
        data = bytearray(_encode(img, "JPEG"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    elif fmt == "GIF":
        data = bytearray(_encode(img, "GIF"))
        data[6:10] = struct.pack("<HH", w, h)
    elif fmt == "BMP":
        data = bytearray(_encode(img, "BMP"))
        data[18:26] = struct.pack("<ii", w, h)
    elif fmt == "WebP":  # lossless: 14-bit sizes minus one, packed after the VP8L signature byte
        data = bytearray(_encode(img, "WEBP", lossless=True))
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        data[21:25] = (bits | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    else:
        data = bytearray(_encode(img, "PNG"))
        data[16:24] = struct.pack(">II", w, h)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("fmt, w, h", [("PNG", 20000, 20000), ("JPEG", 20000, 20000), ("GIF", 65535, 65535),
                                       ("BMP", 30000, 20000), ("WebP", 16384, 16384)])
def test_bomb_refused_by_pillow_is_explained_in_featx_terms(tmp_path, fmt, w, h):
    # All over 2 x MAX_IMAGE_PIXELS, where Pillow's Image.open refuses before featx sees a size.
    (tmp_path / "big.img").write_bytes(_with_declared_size(fmt, w, h))
    d = decode_file(tmp_path / "big.img", SIZE)
    assert d.skip.kind == "decompression_bomb"
    assert d.skip.detail == (f"{fmt} declares {w}\u00d7{h} = {w * h:,} pixels, over the limit of 89,478,485; "
                             "decoding it could exhaust memory (possible decompression bomb)")
    # A caller's limit above Pillow's own hard limit: the reason names the limit that applied.
    d = decode_file(tmp_path / "big.img", SIZE, max_pixels=10**12)
    assert d.skip.kind == "decompression_bomb" and "limit of 178,956,970" in d.skip.detail


def test_png_text_chunk_bomb(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    png = buf.getvalue()
    body = b"Comment\x00\x00" + zlib.compress(b"a" * (20 << 20), 9)  # 20 kB -> 20 MB of text
    crc = struct.pack(">I", zlib.crc32(b"zTXt" + body))
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + crc
    (tmp_path / "z.png").write_bytes(png[:33] + chunk + png[33:])
    d = decode_file(tmp_path / "z.png", SIZE)
    assert d.skip.kind == "decompression_bomb" and "MAX_TEXT_CHUNK" in d.skip.detail


def test_too_small(monkeypatch):
    # No common format lets Pillow open a 0-pixel-wide image, so fake one coming out of open.
    monkeypatch.setattr(decode_image.Image, "open", lambda fp: Image.new("RGB", (0, 5)))
    with pytest.raises(DecodeError) as err:
        open_rgb(b"anything")
    assert err.value.skip.kind == "too_small" and "0\u00d75" in err.value.skip.detail


def test_open_rgb_raises_decode_error_and_1x1_is_valid(fdir):
    with pytest.raises(DecodeError) as err:
        open_rgb(b"")
    assert err.value.skip.kind == "empty"
    img = open_rgb((fdir / "tiny_1x1.png").read_bytes())
    assert img.mode == "RGB" and img.size == (1, 1)


@pytest.mark.parametrize(
    "data, phrase",
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40, "ZIP"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40, "HEIC"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b'{"error": "rate limited", "retry_after": 30}', "JSON"),
        (b"\xde\xad\xbe\xef" * 64, "de ad be ef"),
        ("Ça ne marche pas — accès refusé".encode(), "plain text"),
    ],
    ids=["pdf", "zip", "heic", "svg", "json", "binary", "utf8-text"],
)
def test_not_an_image_details(tmp_path, data, phrase):
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    d = decode_file(p, SIZE)
    assert d.skip.kind == "not_an_image" and phrase in d.skip.detail, d.skip


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated"),  # cut inside the header
        (b"\x89PN", "truncated"),  # cut inside the signature itself
        (b"GIF8", "truncated"),
        (b"\xff\xd8\xff", "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 60 + b"IEND", "corrupt"),  # complete but garbage
        (b"\xff\xd8\x00\x00" + b"\x00" * 100 + b"\xff\xd9", "corrupt"),
        (b"BMW drivers are the worst, said nobody ever", "not_an_image"),  # "BM" is not enough
    ],
    ids=[
        "png-header", "png-signature", "gif-signature", "jpeg-soi", "png-garbage", "jpeg-garbage",
        "bm-text",
    ],
)
def test_image_signature_with_unreadable_header_is_not_called_not_an_image(tmp_path, data, kind):
    p = tmp_path / "x.img"
    p.write_bytes(data)
    d = decode_file(p, SIZE)
    assert d.skip.kind == kind, d.skip


def test_missing_file(tmp_path):
    d = decode_file(tmp_path / "nope.jpg", SIZE)
    assert d.skip.kind == "missing" and d.sha256 == "" and d.nbytes == -1 and d.mtime_ns == -1
    d = decode_file(tmp_path / "nope" / "deeper.jpg", SIZE)
    assert d.skip.kind == "missing"


def test_symlink_to_itself_is_unreadable_and_said_so(tmp_path):
    os.symlink("loop.jpg", tmp_path / "loop.jpg")
    d = decode_file(tmp_path / "loop.jpg", SIZE)
    assert d.skip.kind == "unreadable" and "symbolic link that leads back to itself" in d.skip.detail


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_named_pipe_is_unreadable_and_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    d = decode_file(tmp_path / "pipe.jpg", SIZE)
    assert d.skip.kind == "unreadable" and "named pipe" in d.skip.detail


def test_permission_denied_is_unreadable(tmp_path, monkeypatch):
    p = tmp_path / "secret.jpg"
    badfiles.make_good_image(p)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        p.chmod(0)
    else:  # root reads anything; simulate the OS refusing
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if os.fspath(path) == str(p):
                raise PermissionError(13, "Permission denied", str(p))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(decode_files.os, "open", refuse)
    try:
        d = decode_file(p, SIZE)
    finally:
        p.chmod(0o644)
    assert d.skip.kind == "unreadable" and "ermission denied" in d.skip.detail
    assert d.sha256 == ""


def test_read_bytes_and_sha(fdir):
    data, st = read_bytes(fdir / "rgb.jpg")
    assert data == (fdir / "rgb.jpg").read_bytes() and st.st_size == len(data)
    with pytest.raises(FileNotFoundError):
        read_bytes(fdir / "broken_link.jpg")
    with pytest.raises(IsADirectoryError):
        read_bytes(fdir / "a_directory.jpg")
    assert sha256_bytes(b"") == hashlib.sha256(b"").hexdigest()


def test_invalid_size_is_a_programming_error(fdir):
    data = (fdir / "rgb.jpg").read_bytes()
    for bad in [(0, 224), (224,), (224.0, 224), (True, 3), "224", None]:
        with pytest.raises(ValueError):
            decode_file(fdir / "rgb.jpg", bad)
        if bad is not None:
            with pytest.raises(ValueError):
                open_rgb(data, draft_size=bad)


def test_path_with_nul_byte_is_unreadable_not_an_exception():
    d = decode_file("scraped\x00name.jpg", SIZE)
    assert d.skip.kind == "unreadable" and d.sha256 == ""


# ---------------------------------------------------------------------------------------------
# decode_array, resize_rgb


def test_decode_array_matches_decode_file_for_lossless_png(tmp_path):
    batch = []
    for seed, size in enumerate([(96, 72), (50, 130), (300, 200)]):
        pixels = badfiles.make_good_image(tmp_path / f"g{seed}.png", size=size, seed=seed)
        for target in [SIZE, (100, 150), (400, 30)]:
            from_file = decode_file(tmp_path / f"g{seed}.png", target).pixels
            from_array = decode_array(pixels, target)
            assert from_array.shape == (1, *target, 3) and from_array.dtype == np.uint8
            assert np.array_equal(from_array[0], from_file)
        if size == (96, 72):
            batch = [pixels, pixels[::-1].copy()]
    out = decode_array(np.stack(batch), SIZE)
    assert out.shape == (2, 224, 224, 3)
    assert np.array_equal(out[0], decode_array(batch[0], SIZE)[0])
    assert np.array_equal(out[1], decode_array(batch[1], SIZE)[0])


def test_decode_array_validation():
    good = np.zeros((2, 10, 10, 3), np.uint8)
    assert decode_array(good[:0], (5, 5)).shape == (0, 5, 5, 3)
    assert decode_array(good[:, ::2], (5, 5)).shape == (2, 5, 5, 3)  # non-contiguous input
    with pytest.raises(ValueError, match="uint8"):
        decode_array(good.astype(np.float32), (5, 5))
    with pytest.raises(ValueError, match="uint8"):
        decode_array(good.astype(bool), (5, 5))
    for shape in [(10, 10), (2, 10, 10, 4), (10, 10, 1), (1, 2, 10, 10, 3), (2, 0, 10, 3)]:
        with pytest.raises(ValueError):
            decode_array(np.zeros(shape, np.uint8), (5, 5))
    with pytest.raises(ValueError):
        decode_array(good, (0, 5))


def test_resize_rgb_is_pillow_bilinear():
    img = Image.fromarray(badfiles.scene(300, 200, seed=4))
    out = resize_rgb(img, (50, 70))
    assert out.shape == (50, 70, 3) and out.flags.c_contiguous and out.flags.writeable
    assert np.array_equal(out, np.asarray(img.resize((70, 50), Image.Resampling.BILINEAR)))
    same = resize_rgb(img, (200, 300))
    assert np.array_equal(same, np.asarray(img))
    with pytest.raises(ValueError):
        resize_rgb(img.convert("L"), (10, 10))


def test_deferred_file_decodes_as_decode_file_would(tmp_path):
    # The path featx.gpudecode takes: decode_file hands the bytes over undecoded, and what the batch
    # decoder cannot decode comes back through decode_deferred, which must give decode_file's result.
    good = tmp_path / "good.jpg"
    badfiles.make_good_image(good)
    page = tmp_path / "page.jpg"
    page.write_bytes(b"<!DOCTYPE html><html><title>404 Not Found</title></html>")
    for path in (good, page):
        direct = decode_file(path, SIZE)
        taken = decode_file(path, SIZE, defer=lambda data: True)
        assert taken.pixels is None and taken.skip is None and taken.encoded == path.read_bytes()
        assert (taken.sha256, taken.nbytes, taken.mtime_ns) == (direct.sha256, direct.nbytes, direct.mtime_ns)
        late = decode_deferred(taken, SIZE)
        assert late.encoded is None and late.skip == direct.skip and late.sha256 == direct.sha256
        if path == good:
            assert direct.skip is None and np.array_equal(late.pixels, direct.pixels)
        else:
            assert direct.skip.kind == "not_an_image" and late.pixels is None
    with pytest.raises(ValueError, match="nothing deferred"):
        decode_deferred(direct, SIZE)


# ---------------------------------------------------------------------------------------------
# Pickling, threads, processes, lightness


def test_pickling():
    skip = Skip("truncated", "JPEG data ends early")
    err = pickle.loads(pickle.dumps(DecodeError(skip)))
    assert isinstance(err, DecodeError) and err.skip == skip and str(err) == str(skip)
    d = Decoded("a.jpg", "ab", 3, 4, np.zeros((2, 2, 3), np.uint8), None)
    d2 = pickle.loads(pickle.dumps(d))
    assert d2.path == "a.jpg" and np.array_equal(d2.pixels, d.pixels)
    with pytest.raises(ValueError):
        Skip("bogus", "x")
    assert set(SKIP_KINDS) == {
        "missing", "unreadable", "empty", "not_an_image", "truncated",
        "decompression_bomb", "too_small", "corrupt", "timeout",
    }


def test_threads_give_the_same_results(files):
    d, cases = files
    names = sorted(cases)
    serial = [decode_file(d / n, SIZE) for n in names]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda n: decode_file(d / n, SIZE), names * 2))
    for i, t in enumerate(threaded):
        s = serial[i % len(names)]
        assert t.skip == s.skip and t.sha256 == s.sha256
        assert (t.pixels is None and s.pixels is None) or np.array_equal(t.pixels, s.pixels)


def test_first_decodes_racing_in_threads_all_succeed(fdir):
    # Fresh interpreter, so Pillow's plugins are still unregistered when 16 threads open at once.
    code = f"""
import threading, sys
from featx.decode import decode_file
names = ["image.webp", "image.tiff", "image.bmp", "animated.gif", "rgb.jpg", "gray16.png"] * 3
barrier = threading.Barrier(len(names))
results = [None] * len(names)
def work(i):
    barrier.wait()
    results[i] = decode_file({str(fdir)!r} + "/" + names[i], (32, 32)).skip
threads = [threading.Thread(target=work, args=(i,)) for i in range(len(names))]
[t.start() for t in threads]
[t.join() for t in threads]
print([str(r) for r in results if r is not None])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_spawned_process_pool(fdir):
    ctx = multiprocessing.get_context("spawn")
    paths = [str(fdir / "rgb.jpg"), str(fdir / "text.jpg")]
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        results = list(pool.map(decode_file, paths, [SIZE] * 2))
    assert results[0].pixels.shape == (224, 224, 3)
    assert results[1].skip.kind == "not_an_image"


def test_import_stays_light():
    code = (
        "import sys, featx.decode; "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", "importing featx.decode pulled in a deep-learning framework"


# ---------------------------------------------------------------------------------------------
# Fuzzing with mutated real files


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _seed_files() -> dict[str, dict[str, bytes]]:
    """Real files to mutate, by family: a real photo as its JPEG (tests/photos.py), and that photo
    re-encoded in the variants whose decoders differ (progressive, CMYK, EXIF, palette, 16-bit,
    interlaced...). Small (64x48) so that thousands of decodes stay fast."""
    from conftest import photo_files

    real = photo_files("cat", 1, offset=40)[0]
    photo = Image.open(real).convert("RGB").crop((0, 0, 64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    jpeg = {
        "camera": real.read_bytes(),  # about 128 px, as written by tests/photos.py
        "baseline": _encode(photo, "JPEG", quality=85),
        "progressive": _encode(photo, "JPEG", quality=85, progressive=True),
        "grey": _encode(photo.convert("L"), "JPEG", quality=85),
        "cmyk": _encode(photo.convert("CMYK"), "JPEG", quality=85),
        "exif": _encode(photo, "JPEG", quality=85, exif=exif.tobytes()),
        "subsampled-restart": _encode(photo, "JPEG", quality=60, subsampling=2, restart_marker_blocks=2),
    }
    png = {
        "rgb": _encode(photo, "PNG"),
        "rgba": _encode(rgba, "PNG"),
        "palette-trns": _encode(photo.quantize(16), "PNG", transparency=0),
        "grey16": _encode(Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257), "PNG"),
        "rgb16": badfiles.png_rgb16_bytes(np.asarray(photo)),
        "interlaced": _adam7(photo),
        "exif": _encode(photo, "PNG", exif=exif.tobytes()),
    }
    other = {
        "gif": _encode(photo, "GIF"),
        "animated-gif": _encode(photo, "GIF", save_all=True, append_images=[photo.rotate(90)]),
        "webp": _encode(photo, "WEBP", quality=80),
        "webp-lossless": _encode(rgba, "WEBP", lossless=True),
        "tiff": _encode(photo, "TIFF"),
        "tiff-lzw": _encode(photo, "TIFF", compression="tiff_lzw"),
        "bmp": _encode(photo, "BMP"),
    }
    return {"JPEG": jpeg, "PNG": png, "other": other}


def _adam7(img: Image.Image) -> bytes:
    """An interlaced (Adam7) PNG: Pillow reads them but cannot write them, so build one."""
    arr = np.asarray(img.convert("RGB"))
    h, w, _ = arr.shape
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    raw = b""
    for y0, x0, dy, dx in passes:  # (row start, column start, row step, column step)
        sub = arr[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + badfiles._png_chunk(b"IHDR", ihdr)
            + badfiles._png_chunk(b"IDAT", zlib.compress(raw)) + badfiles._png_chunk(b"IEND", b""))


SEEDS = _seed_files()
FUZZ_SIZE = (32, 40)
# What a readable, existing file may be skipped as: never missing/unreadable/timeout.
CONTENT_KINDS = {"empty", "not_an_image", "truncated", "decompression_bomb", "too_small", "corrupt"}

_pos = st.floats(0, 1, allow_nan=False)
_generic = st.one_of(
    st.tuples(st.just("truncate"), _pos),
    st.tuples(st.just("xor"), _pos, st.integers(1, 255)),
    st.tuples(st.just("bit"), _pos, st.integers(0, 7)),
    st.tuples(st.just("insert"), _pos, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), _pos, st.integers(1, 64)),
    st.tuples(st.just("duplicate"), _pos, st.integers(1, 256)),
    # header corruption: the first 64 bytes hold signatures, sizes, modes, table offsets
    st.tuples(st.just("header"), st.integers(0, 63), st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)),
)
_interesting_ints = (st.sampled_from([0, 1, 2, 3, 255, 256, 16383, 20000, 65535, 2**31 - 1, 2**32 - 1])
                     | st.integers(0, 2**32 - 1))
# PNG: change one IHDR field and repair the CRC, so the change reaches the decoder instead of
# being stopped by the checksum.
_png_ops = st.one_of(
    st.tuples(st.just("ihdr"), st.sampled_from(["width", "height"]), _interesting_ints),
    st.tuples(st.just("ihdr"), st.sampled_from(["depth", "colour", "compression", "filter", "interlace"]),
              st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 255])),
    st.tuples(st.just("fix_crcs")),
)
# JPEG: overwrite a byte inside one marker segment (frame size, tables, scan header...).
_jpeg_ops = st.tuples(st.just("segment"), st.integers(0, 40), _pos, st.integers(0, 255))

_IHDR_FIELDS = {"width": (16, ">I"), "height": (20, ">I"), "depth": (24, ">B"), "colour": (25, ">B"),
                "compression": (26, ">B"), "filter": (27, ">B"), "interlace": (28, ">B")}


def _png_fix_crcs(b: bytearray) -> None:
    i = 8
    while i + 12 <= len(b):
        n = struct.unpack(">I", b[i:i + 4])[0]
        if i + 12 + n > len(b):
            return
        b[i + 8 + n:i + 12 + n] = struct.pack(">I", zlib.crc32(bytes(b[i + 4:i + 8 + n])))
        i += 12 + n


def _jpeg_segments(b: bytes) -> list[tuple[int, int]]:
    """(start, end) of each marker segment's payload, up to the first scan's data."""
    out, i = [], 2
    while i + 4 <= len(b) and b[i] == 0xFF and len(out) < 64:
        n = struct.unpack(">H", b[i + 2:i + 4])[0]
        out.append((i + 4, min(i + 2 + n, len(b))))
        if b[i + 1] == 0xDA:  # start of scan: entropy-coded data follows
            break
        i += 2 + n
    return out


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        kind = op[0]
        pos = int(op[1] * len(b)) if len(op) > 1 and isinstance(op[1], float) else 0
        pos = min(pos, max(len(b) - 1, 0))
        if kind == "truncate":
            del b[int(op[1] * len(b)):]
        elif kind == "xor" and b:
            b[pos] ^= op[2]
        elif kind == "bit" and b:
            b[pos] ^= 1 << op[2]
        elif kind == "insert":
            b[pos:pos] = op[2]
        elif kind == "delete":
            del b[pos:pos + op[2]]
        elif kind == "duplicate":
            b[pos:pos] = b[pos:pos + op[2]]
        elif kind == "header" and op[1] < len(b):
            b[op[1]] = op[2]
        elif kind == "ihdr" and len(b) >= 33 and b[12:16] == b"IHDR":
            offset, fmt = _IHDR_FIELDS[op[1]]
            b[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, op[2] % (256 if fmt == ">B" else 2**32))
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
        elif kind == "fix_crcs" and b.startswith(b"\x89PNG"):
            _png_fix_crcs(b)
        elif kind == "segment":
            segments = _jpeg_segments(bytes(b))
            if segments:
                start, end = segments[op[1] % len(segments)]
                if end > start:
                    b[start + int(op[2] * (end - start - 1))] = op[3]
    return bytes(b)


class _FuzzFile:
    """One file rewritten in place for every case, in RAM when /dev/shm exists. On a disk file
    system, open(path, "wb") costs milliseconds (ext4 flushes a file truncated that way when it
    is closed) and even a truncate waits for the journal, which would double the fuzzing time."""

    def __init__(self, directory: Path) -> None:
        self._dir = tempfile.mkdtemp(prefix="featx-fuzz-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK)
                                     else directory)
        self.path = Path(self._dir) / "mutated.img"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def write(self, data: bytes) -> None:
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def close(self) -> None:
        os.close(self._fd)
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    f = _FuzzFile(tmp_path_factory.mktemp("fuzz"))
    yield f
    f.close()


def _check_decodes_or_skips(f: _FuzzFile, data: bytes) -> None:
    f.write(data)
    d = decode_file(f.path, FUZZ_SIZE)
    assert isinstance(d, Decoded)
    assert d.sha256 == hashlib.sha256(data).hexdigest() and d.nbytes == len(data)
    if d.skip is None:
        assert d.pixels is not None and d.pixels.shape == (*FUZZ_SIZE, 3) and d.pixels.dtype == np.uint8
    else:
        assert d.pixels is None and d.skip.kind in CONTENT_KINDS, d.skip
        # every failure is explained; "unexpected error" is decode_file's last line of defence
        assert d.skip.detail.strip() and not d.skip.detail.startswith("unexpected error"), d.skip


# 3,000 mutated files in all (about 25 s here; 750 in the fast tier, conftest.examples), the same ones on every run: derandomize
# makes CI reproducible, and database=None keeps no state between runs. The deadline is the
# "never hangs" bound per file (generous: a 64x48 image decodes in about a millisecond).
# Pillow warns about what it skips over in damaged files (EXIF, TIFF tags, bomb-sized images).
FUZZ_WARNINGS = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
FUZZ = settings(deadline=timedelta(seconds=10), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ_WARNINGS
@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=conftest.examples(1200))
@given(name=st.sampled_from(sorted(SEEDS["JPEG"])), ops=st.lists(_generic | _jpeg_ops, min_size=1, max_size=4))
def test_fuzz_mutated_jpeg(fuzz_file, name, ops):
    _check_decodes_or_skips(fuzz_file, _mutate(SEEDS["JPEG"][name], ops))


@FUZZ_WARNINGS
@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=conftest.examples(1200))
@given(name=st.sampled_from(sorted(SEEDS["PNG"])), ops=st.lists(_generic | _png_ops, min_size=1, max_size=4))
def test_fuzz_mutated_png(fuzz_file, name, ops):
    _check_decodes_or_skips(fuzz_file, _mutate(SEEDS["PNG"][name], ops))


@FUZZ_WARNINGS
@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=conftest.examples(600))
@given(name=st.sampled_from(sorted(SEEDS["other"])), ops=st.lists(_generic, min_size=1, max_size=4))
def test_fuzz_mutated_gif_webp_tiff_bmp(fuzz_file, name, ops):
    _check_decodes_or_skips(fuzz_file, _mutate(SEEDS["other"][name], ops))


def test_fuzz_seeds_are_real_decodable_files(fuzz_file):
    for family in SEEDS.values():
        for name, data in family.items():
            fuzz_file.write(data)
            assert decode_file(fuzz_file.path, FUZZ_SIZE).skip is None, name
    # the hand-built interlaced PNG really is the photo
    with Image.open(io.BytesIO(SEEDS["PNG"]["interlaced"])) as im:
        assert im.info.get("interlace") == 1
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(Image.open(io.BytesIO(SEEDS["PNG"]["rgb"]))))
    # the structured mutations do reach what they aim at
    png = SEEDS["PNG"]["rgb"]
    wide = _mutate(png, [("ihdr", "width", 20000), ("ihdr", "height", 20000)])
    fuzz_file.write(wide)
    assert decode_file(fuzz_file.path, FUZZ_SIZE).skip.kind == "decompression_bomb"
    assert len(_jpeg_segments(SEEDS["JPEG"]["baseline"])) >= 4
