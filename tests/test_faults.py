"""A scraped folder: real photos mixed with one real file of every bad (and awkward) kind.

One extraction through the real ``featx.extract.extract`` (vendored MobileNet α=0.25 at
TEST_SIZE), and one through the ``featx extract`` command line, over a class-folder set whose
cats share their folder with truncated, empty, mislabelled, hostile, unreadable, vanishing
and hanging files. Every case is one row of a table (one test id per file), so a failing kind is
named. Also here: the per-image time limit of featx.pipeline.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import badfiles
import featx.pipeline as pipeline_mod
from conftest import REPO, TEST_SIZE, photo_files, make_photo_set, run_main
from featx.decode import SKIP_KINDS
from featx.extract import extract
from featx.sources import Item
from featx.store import FeatureStore

HANG_TIMEOUT = 3.0  # run A's per-image limit: far above any real decode here, so only hangs.jpg hits it


@dataclass(frozen=True)
class Case:
    kind: str | None  # expected skip kind; None: must be extracted
    words: tuple[str, ...] = ()  # what the reason must say (any case) for a person to act on it
    same_as: str | None = None  # relpath whose features must be identical (a lossless variant)


# make_bad_files' bad files, with the words their reasons must contain
SCRAPED_BAD = {
    "truncated.jpg": ("ends early", "jpeg"),
    "truncated.png": ("ends early", "png"),
    "truncated.webp": ("ends early",),
    "corrupt.png": ("damaged",),
    "empty.jpg": ("empty", "0 bytes"),
    "text.jpg": ("plain text", "not an image"),
    "error_page.png": ("html page", "404 not found"),
    "bomb.png": ("20000\u00d720000", "decompression bomb"),
    "broken_link.jpg": ("broken symbolic link", "does_not_exist.jpg"),
}
CAFE = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name: not valid UTF-8
BAD_NAME = os.fsdecode(b"bad\xff.png")


def _rel(*parts: str) -> str:
    """The relpath featx records: POSIX, undecodable bytes shown as \\xNN."""
    return "/".join(os.fsencode(p).decode("utf-8", "backslashreplace") for p in parts)


# The bad files of _build_tree, listed here so that each is its own test id.
BAD_RELS = [_rel("cat", "scraped", n) for n in SCRAPED_BAD] + [
    _rel("cat", "odd", n)
    for n in ("photo_truncated.jpg", BAD_NAME, "self_loop.jpg", "pipe.jpg", "deleted.jpg", "hangs.jpg")
]

GOOD_KINDS = [  # the awkward-but-valid files the issue lists (under cat/); each must be in the store
    "scraped/cmyk.jpg", "scraped/cmyk_icc.jpg", "variants/photo_cmyk.jpg", "scraped/gray16.png",
    "variants/grey16.png", "variants/photo_rgb16.png", "scraped/gray16b.tiff",
    "scraped/palette_transparent.png", "variants/photo_palette_transparent.png", "scraped/la.png",
    "variants/photo_la.png", "scraped/rgba.png", "variants/photo_rgba.png", "variants/photo_rgba_opaque.png",
    "scraped/exif_rotated.jpg", "scraped/exif_rotated.png", "variants/exif_o6_photo.jpg",
    *[f"variants/exif_o{n}.png" for n in range(2, 9)], "scraped/animated.gif", "variants/photo_animated.gif",
    "scraped/animated.webp", "scraped/image.webp", "variants/photo.webp", "variants/photo_lossless.webp",
    "scraped/image.tiff", "variants/photo.tiff", "scraped/image.bmp", "scraped/tiny_1x1.png",
    "variants/photo_1x1.png", "scraped/large.jpg", f"odd/{_rel(CAFE)}",
]


def _build_tree(root: Path) -> tuple[dict[str, Case], dict[str, Path]]:
    """The folder: 12 cats + 12 flowers (real photos) and, under cat/, every case."""
    make_photo_set(root, classes=("cat", "flower"), n=12)
    cases: dict[str, Case] = {}
    for cls in ("cat", "flower"):
        for f in sorted((root / cls).glob("*.jpg")):
            cases[_rel(cls, f.name)] = Case(None)

    # Class folders may have sub-folders: the generated cases of tests/badfiles.py in one.
    scraped = root / "cat" / "scraped"
    for name, kind in badfiles.make_bad_files(scraped).items():
        rel = _rel("cat", "scraped", name)
        if name == "a_directory.jpg":
            continue  # a folder named like an image is walked as an (empty) folder, never listed
        if kind is None:
            same = _rel("cat", "scraped", "upright.png") if name == "exif_rotated.png" else None
            cases[rel] = Case(None, same_as=same)
        else:
            cases[rel] = Case(kind, SCRAPED_BAD[name])

    # Real photos (cropped to 128x96, so that a 90 degree EXIF turn changes the shape) in every mode.
    spare = photo_files("cat", 8, offset=40)  # none of them among the 12 cats above
    photo = np.asarray(Image.open(spare[0]).convert("RGB"))[:96]
    other = np.asarray(Image.open(spare[1]).convert("RGB"))[:96]
    variants = badfiles.make_photo_variants(photo, other, root / "cat" / "variants")
    for name, ref in variants.items():
        cases[_rel("cat", "variants", name)] = Case(None, same_as=ref and _rel("cat", "variants", ref))

    odd = root / "cat" / "odd"
    odd.mkdir()
    data = spare[2].read_bytes()
    (odd / "photo_truncated.jpg").write_bytes(data[: len(data) * 6 // 10])  # an aborted download
    cases[_rel("cat", "odd", "photo_truncated.jpg")] = Case("truncated", ("ends early", "jpeg"))
    shutil.copy(spare[3], os.path.join(os.fsencode(odd), b"caf\xe9.jpg"))
    cases[_rel("cat", "odd", CAFE)] = Case(None)
    Path(os.fsdecode(os.path.join(os.fsencode(odd), b"bad\xff.png"))).write_bytes(badfiles.HTML_404)
    cases[_rel("cat", "odd", BAD_NAME)] = Case("not_an_image", ("html page",))
    os.symlink("self_loop.jpg", odd / "self_loop.jpg")  # a link to itself: ELOOP when opened
    cases[_rel("cat", "odd", "self_loop.jpg")] = Case("unreadable", ("symbolic link", "back to itself"))
    os.mkfifo(odd / "pipe.jpg")  # opening it for reading would block forever without O_NONBLOCK
    cases[_rel("cat", "odd", "pipe.jpg")] = Case("unreadable", ("named pipe",))
    shutil.copy(spare[4], odd / "deleted.jpg")  # deleted after listing, before reading
    cases[_rel("cat", "odd", "deleted.jpg")] = Case("missing", ("no such file",))
    shutil.copy(spare[5], odd / "hangs.jpg")  # its read blocks (think: a hung network share)
    cases[_rel("cat", "odd", "hangs.jpg")] = Case(
        "timeout", ("longer than", f"limit of {HANG_TIMEOUT:g} s", "--image-timeout"))
    os.symlink(root / "cat", odd / "loop")  # a folder link back up the tree: must not hang
    (odd / "notes.txt").write_text("downloaded from somewhere\n")
    return cases, {"unreadable": spare[6], "locked": spare[7]}


@dataclass
class FaultRun:
    root: Path
    store: Path
    cases: dict[str, Case]
    spares: dict[str, Path]
    summary: object  # ExtractSummary
    paths: list[str]
    features: dict[str, np.ndarray]
    labels: dict[str, str]
    skipped: dict[str, dict]


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, backbone) -> FaultRun:
    """Run A: the real extract, in-process, with deleted.jpg removed once the pipeline starts and
    hangs.jpg's read blocking until the run is over."""
    base = tmp_path_factory.mktemp("faults")
    root = base / "scraped_set"
    cases, spares = _build_tree(root)
    deleted = root / "cat" / "odd" / "deleted.jpg"
    release = threading.Event()
    real_decode, real_run = pipeline_mod.decode_file, pipeline_mod.run

    def decode_file(path, *args, **kwargs):
        if os.fspath(path).endswith("hangs.jpg"):
            release.wait(120)  # stands in for a read that never returns
        return real_decode(path, *args, **kwargs)

    def run(items, *args, **kwargs):
        assert any(it.path == str(deleted) for it in items), "deleted.jpg must have been listed"
        deleted.unlink()  # listed and stat'ed by extract, gone before the decoder reads it
        return real_run(items, *args, **kwargs)

    store = base / "a.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline_mod, "decode_file", decode_file)
        mp.setattr(pipeline_mod, "run", run)
        try:
            summary = extract(root, store, backbone=backbone, batch_size=8, workers=2, progress=False,
                              image_timeout=HANG_TIMEOUT)
        finally:
            release.set()  # the abandoned thread finishes its read and exits (its result dropped)
    with FeatureStore(store) as fs:
        paths = fs.paths.tolist()
        X = fs.X
        labels = [fs.label_names[int(i)] for i in fs.y]
        skipped = {s["path"]: s for s in fs.skipped}
    return FaultRun(root, store, cases, spares, summary, paths, dict(zip(paths, X)), dict(zip(paths, labels)),
                    skipped)


@pytest.mark.parametrize("name", GOOD_KINDS)
def test_awkward_good_file_is_extracted(fault_run, name):
    rel = "cat/" + name
    assert fault_run.cases[rel].kind is None
    assert rel not in fault_run.skipped, fault_run.skipped.get(rel)
    assert rel in fault_run.features, f"{rel} is not in the store"
    row = fault_run.features[rel]
    assert row.shape == (256,) and np.isfinite(row).all() and row.std() > 0
    assert fault_run.labels[rel] == "cat"
    ref = fault_run.cases[rel].same_as
    if ref is not None:
        # a lossless variant (16-bit, TIFF, lossless WebP, opaque RGBA, EXIF-rotated, the GIF's
        # first frame): the very same pixels, so the very same features
        np.testing.assert_allclose(row, fault_run.features[ref], rtol=1e-5, atol=1e-6, err_msg=f"{rel} vs {ref}")


@pytest.mark.parametrize("rel", BAD_RELS, ids=[r.split("/", 1)[1] for r in BAD_RELS])
def test_bad_file_is_a_recorded_skip_with_a_clear_reason(fault_run, rel):
    case = fault_run.cases[rel]
    assert case.kind in SKIP_KINDS
    assert rel not in fault_run.features, f"{rel} should not have features"
    skip = fault_run.skipped.get(rel)
    assert skip is not None, f"{rel} is not recorded as skipped in the store"
    assert skip["kind"] == case.kind, skip
    reason = skip["reason"]
    for word in case.words:
        assert word.lower() in reason.lower(), f"{rel}: {word!r} missing from {reason!r}"
    # a sentence for a person, not a bare exception
    assert len(reason) > 20 and "Traceback" not in reason and not reason.startswith("unexpected")
    in_summary = [s for s in fault_run.summary.skipped if s["path"] == rel]
    assert in_summary == [{"path": rel, "kind": case.kind, "reason": reason}]


def test_every_listed_file_is_accounted_for_exactly_once(fault_run):
    s = fault_run.summary
    good = {p for p, c in fault_run.cases.items() if c.kind is None}
    bad = {p: c.kind for p, c in fault_run.cases.items() if c.kind is not None}
    assert set(fault_run.paths) == good  # every good image, and nothing else
    assert {p: r["kind"] for p, r in fault_run.skipped.items()} == bad
    assert s.n_images == len(fault_run.cases) == s.n_extracted + s.n_reused + s.n_skipped
    assert s.n_skipped == len(bad) and s.n_extracted + s.n_reused == len(good)
    assert sum(s.skipped_by_kind.values()) == len(bad)
    assert not s.interrupted
    text = s.format()
    assert f"{s.n_skipped} skipped" in text
    for rel in bad:
        assert rel in text  # a person reading the summary sees each bad file (up to 20 are listed)
    text.encode("utf-8")  # printable as UTF-8, whatever the file names were


def test_folder_problems_are_reported_not_hung_on(fault_run):
    ignored = fault_run.summary.ignored
    loop = [m for m in ignored if "/odd/loop" in m]
    assert loop and "symlink loop" in loop[0], ignored
    assert any(m.endswith("notes.txt: not an image file name") for m in ignored)
    assert "ignored" in fault_run.summary.format()


def test_exif_rotated_camera_jpeg_has_the_upright_photos_features(fault_run, backbone):
    # JPEG re-encodes the sideways pixels, so equal only up to JPEG noise; without the EXIF turn
    # the features would be those of a sideways cat, much further away.
    rot = fault_run.features["cat/variants/exif_o6_photo.jpg"]
    up = fault_run.features["cat/variants/upright_photo.jpg"]
    with Image.open(fault_run.root / "cat/variants/exif_o6_photo.jpg") as im:
        sideways = np.asarray(im.convert("RGB").resize((TEST_SIZE, TEST_SIZE), Image.Resampling.BILINEAR))
    side = backbone.predict(np.ascontiguousarray(sideways)[None])[0]
    assert np.linalg.norm(rot - up) < 0.25 * np.linalg.norm(side - up)
    cos = float(rot @ up / (np.linalg.norm(rot) * np.linalg.norm(up)))
    assert cos > 0.98, cos


def test_non_utf8_file_names_are_stored_and_shown(fault_run):
    with FeatureStore(fault_run.store) as fs:
        paths = fs.paths.tolist()
        info = fs.info()
    assert "cat/odd/caf\\xe9.jpg" in paths
    assert any(s["path"] == "cat/odd/bad\\xff.png" for s in info["skipped"])
    json.dumps(info, ensure_ascii=False).encode("utf-8")


def test_hanging_file_did_not_hold_up_the_others(fault_run):
    # The run went on: every image listed after hangs.jpg is in the store; and the abandoned
    # decode thread is gone once its read returned.
    after = [p for p, c in fault_run.cases.items() if p > "cat/odd/hangs.jpg" and c.kind is None]
    assert after and set(after) <= set(fault_run.paths)
    deadline = time.monotonic() + 10
    while any(t.name.startswith("featx-decode") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("featx-decode")]


# ---------------------------------------------------------------------------------------------
# The command line, with files the user running featx may not read


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_file_permission_override() -> None:
    """preexec_fn for a root child: drop the two capabilities that let root ignore file modes.

    Why not setuid(65534): the interpreter may live where an unprivileged uid cannot even start
    it (here under /root, mode 0700). Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH is
    refused a mode-000 file like any user (capabilities gone from the bounding set are gone after
    exec).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def _denied_preexec(probe: Path):
    """The preexec_fn under which mode-000 files really are unreadable (None when not root),
    after proving it on `probe`; skips the test, visibly, where that cannot be arranged."""
    preexec = _without_file_permission_override if os.geteuid() == 0 else None
    try:
        r = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], capture_output=True,
                           text=True, preexec_fn=preexec, timeout=60)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot start a child that lacks the right to read any file: {exc}")
    if r.returncode == 0 or "PermissionError" not in r.stderr:
        pytest.skip(f"a mode-000 file stays readable here (rc {r.returncode}): the permission case "
                    "cannot be tested for real")
    return preexec


def test_cli_extract_reports_every_bad_file_and_extracts_every_good_one(fault_run, tmp_path):
    root, cases = fault_run.root, dict(fault_run.cases)
    # Now also files this user may not read: a photo and a whole sub-folder, both mode 000.
    odd = root / "cat" / "odd"
    no_perm = odd / "no_permission.jpg"
    shutil.copy(fault_run.spares["unreadable"], no_perm)
    locked = odd / "locked"
    locked.mkdir()
    shutil.copy(fault_run.spares["locked"], locked / "inside.jpg")
    no_perm.chmod(0)
    locked.chmod(0)
    try:
        preexec = _denied_preexec(no_perm)
        del cases["cat/odd/deleted.jpg"]  # gone since run A
        cases["cat/odd/hangs.jpg"] = Case(None)  # nothing blocks its read in this process
        cases["cat/odd/no_permission.jpg"] = Case("unreadable", ("permission denied",))
        store = tmp_path / "cli.h5"
        # a child process, not run_main: only a process without the file-permission capabilities
        # (preexec_fn) is refused the mode-000 files, as an ordinary user would be
        r = subprocess.run(
            [sys.executable, "-m", "featx.cli", "extract", str(root), "--store", str(store), "--backbone",
             "mobilenet_0.25", "--image-size", str(TEST_SIZE), "--batch-size", "8", "--workers", "2",
             "--image-timeout", "30", "--no-progress", "--json"],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=REPO,
            timeout=300, preexec_fn=preexec)
    finally:
        no_perm.chmod(0o644)
        locked.chmod(0o755)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    bad = {p: c for p, c in cases.items() if c.kind is not None}
    got = {s["path"]: s for s in summary["skipped"]}
    assert {p: s["kind"] for p, s in got.items()} == {p: c.kind for p, c in bad.items()}
    for rel, case in bad.items():
        for word in case.words:
            assert word.lower() in got[rel]["reason"].lower(), (rel, got[rel]["reason"])
    assert summary["n_images"] == len(cases) == summary["n_extracted"] + summary["n_reused"] + summary["n_skipped"]
    assert any("/odd/locked" in m and "Permission denied" in m for m in summary["ignored"]), summary["ignored"]
    assert any("symlink loop" in m for m in summary["ignored"])

    info = run_main("info", str(store), "--json")
    assert info.returncode == 0, info.stderr[-3000:]
    data = json.loads(info.stdout)
    assert data["n_images"] == sum(c.kind is None for c in cases.values())
    assert {s["path"]: s["kind"] for s in data["skipped"]} == {p: c.kind for p, c in bad.items()}
    with FeatureStore(store) as fs:
        assert set(fs.paths.tolist()) == {p for p, c in cases.items() if c.kind is None}
        assert "cat/odd/caf\\xe9.jpg" in fs.paths.tolist()
    text = run_main("info", str(store))  # the plain-text listing prints the odd names too
    assert text.returncode == 0 and "bad\\xff.png" in text.stdout, text.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# The per-image time limit (featx.pipeline). A real file that blocks cannot be made here (named
# pipes are already refused without blocking), so the decoder is slowed for one path: what is
# under test is the pipeline's limit, not the decoder.


def test_timeout_keeps_order_batches_and_features(backbone, monkeypatch):
    files = photo_files("rocket", 11)
    items = [Item(str(f), f.name, "rocket", "train") for f in files]
    stuck = items[4].path
    release = threading.Event()
    real = pipeline_mod.decode_file

    def slow(path, *args, **kwargs):
        if os.fspath(path) == stuck:
            release.wait(60)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "decode_file", slow)
    started = time.monotonic()
    try:
        results = list(pipeline_mod.run(items, backbone.predict, image_size=backbone.image_size, batch_size=4,
                                        workers=2, image_timeout=0.5))
    finally:
        release.set()
    assert time.monotonic() - started < 30
    computed = [it for r in results for it, _ in r.computed]
    assert computed == [it for it in items if it.path != stuck]  # input order kept
    assert [len(r.computed) for r in results] == [4, 4, 2]  # full batches; only the last is short
    skipped = [d for r in results for _, d in r.skipped]
    assert len(skipped) == 1 and skipped[0].skip.kind == "timeout" and skipped[0].path == stuck
    assert "limit of 0.5 s" in skipped[0].skip.detail
    feats = np.concatenate([r.features for r in results])
    direct = backbone.predict(np.stack([real(it.path, backbone.image_size).pixels for it in computed]))
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)


def test_stuck_decode_does_not_block_process_exit():
    # A worker stuck for good (a read on a dead NFS mount) must neither stall the run nor keep the
    # process alive at exit. No model needed: this is the thread pool alone.
    files = [str(f) for f in photo_files("coffee", 6)]
    code = textwrap.dedent(f"""
        import threading, featx.pipeline as p
        files = {files!r}
        def work(path):
            if path == files[2]:
                threading.Event().wait()  # never returns
            return p.decode_file(path, (32, 32)).skip
        print(list(p.ordered_map(work, files, workers=2, window=4, timeout=0.5,
                                 on_timeout=lambda path: "timeout")))
    """)
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[None, None, 'timeout', None, None, None]"
    assert time.monotonic() - started < 30


def test_too_many_stuck_images_stop_with_a_clear_error():
    release = threading.Event()

    def work(x):
        if x >= 2:
            release.wait(30)
        return x

    try:
        with pytest.raises(pipeline_mod.StuckDecodes, match="probably hanging"):
            list(pipeline_mod.ordered_map(work, range(10), workers=2, window=4, timeout=0.2,
                                          on_timeout=lambda x: None, max_stuck=2))
    finally:
        release.set()


def test_fn_errors_still_propagate_and_none_items_are_mapped():
    def work(x):
        if x == 5:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError):
        list(pipeline_mod.ordered_map(work, range(10), workers=2, window=3, timeout=5, on_timeout=lambda x: x))
    assert list(pipeline_mod.ordered_map(lambda x: x, [None, 1, None], workers=2, window=2)) == [None, 1, None]


def test_decode_threads_grow_only_while_the_consumer_waits_for_them():
    def threads_used(work_seconds: float, consume_seconds: float) -> set[str]:
        names: set[str] = set()

        def work(x):
            names.add(threading.current_thread().name)
            time.sleep(work_seconds)  # releases the GIL, as Pillow's decoder does
            return x

        out = []
        for x in pipeline_mod.ordered_map(work, range(400), workers=2, window=8, max_workers=6):
            time.sleep(consume_seconds)
            out.append(x)
        assert out == list(range(400))  # order kept while the pool grows
        return names

    assert len(threads_used(0.004, 0.0)) == 6  # slow work, instant consumer: up to max_workers
    assert len(threads_used(0.0, 0.002)) == 2  # fast work, slow consumer: no extra thread


def test_image_timeout_is_validated(photo_set, tmp_path, backbone):
    for bad in (0, -1, float("nan"), "60", True):
        with pytest.raises(ValueError, match="image_timeout"):
            extract(photo_set, tmp_path / "s.h5", backbone=backbone, image_timeout=bad, progress=False)
    assert not (tmp_path / "s.h5").exists()  # refused before anything was read or written
    from featx.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["extract", "d", "--store", "s.h5", "--image-timeout", "-1"])
    assert exit_.value.code == 2
    assert build_parser().parse_args(["extract", "d", "--store", "s", "--image-timeout", "0"]).image_timeout == 0
    assert build_parser().parse_args(["extract", "d", "--store", "s"]).image_timeout == 60
