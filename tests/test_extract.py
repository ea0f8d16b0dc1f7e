"""Extraction into the store on real photos with the real vendored backbone."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from conftest import TEST_SIZE, photo_files, make_photo_set
from featx.extract import extract, extract_features
from featx.store import FeatureStore, FingerprintMismatch, StoreError, StoreLocked, StoreWriter
from featx.backbones import fingerprint_id
from featx.config import BackboneConfig


def test_extract_class_folders_records_everything(photo_set, tmp_path, backbone):
    store = tmp_path / "s.h5"
    summary = extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    assert summary.n_images == 24 and summary.n_extracted == 24 and summary.n_skipped == 0
    assert summary.classes == {"cat": 12, "flower": 12} and "one class" not in summary.format()
    assert not (tmp_path / "s.h5.journal").exists()  # a clean run leaves no empty journal folder
    with FeatureStore(store) as fs:
        assert len(fs) == 24
        assert fs.label_names == ["cat", "flower"]
        X = fs.X
        assert X.shape == (24, 256) and X.dtype == np.float32 and np.isfinite(X).all()
        assert X.std(axis=0).mean() > 0.01  # real, varied features
        # stratified seeded split: 20% of each class of 12 → 2 (round(2.4)) validation per class
        assert sorted(fs.splits.tolist()).count("validation") == 4
        for cls in (0, 1):
            assert ((fs.y == cls) & (fs.splits == "validation")).sum() == 2
        assert fs.split_method["method"] == "stratified-hash"
        assert fs.fingerprint["backbone"] == "mobilenet_0.25" and fs.fingerprint["image_size"] == [TEST_SIZE] * 2
        assert not fs.random_weights
        # the store key is the sha256 of the file bytes
        import hashlib
        p = fs.paths[0]
        assert fs.sha256[0] == hashlib.sha256((photo_set / p).read_bytes()).hexdigest()


def test_same_image_same_features_as_direct_model_call(photo_set, tmp_path, backbone):
    store = tmp_path / "s.h5"
    extract(photo_set, store, backbone=backbone, batch_size=5, progress=False)
    from featx.decode import decode_file

    with FeatureStore(store) as fs:
        i = 7
        pixels = decode_file(photo_set / fs.paths[i], backbone.image_size).pixels
        direct = backbone.predict(pixels[None])[0]
        np.testing.assert_allclose(fs.features(np.array([i]))[0], direct, rtol=1e-4, atol=1e-5)


def test_store_is_plain_hdf5(photo_set, tmp_path, backbone):
    store = tmp_path / "s.h5"
    extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    with h5py.File(store, "r") as f:
        assert f["features"].shape == (24, 256)
        assert f["sha256"].shape == (24,) and len(f["sha256"][0]) == 64
        assert f["path"].asstr()[0].endswith(".jpg")
        assert set(f["split"].asstr()[()]) == {"train", "validation"}
        assert f.attrs["format"] == "featx.store"
        assert "mobilenet_0.25" in f.attrs["fingerprint"]
        assert "skipped" in f and "reason" in f["skipped"]


def test_rerun_is_incremental(photo_set, tmp_path, backbone):
    store = tmp_path / "s.h5"
    extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    with FeatureStore(store) as fs:
        before = dict(zip(fs.paths.tolist(), fs.X))
    again = extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    assert again.n_extracted == 0 and again.n_cached == 24
    # one new image, one changed image (new content at an existing path)
    new = photo_files("cat", 1, offset=50)[0]
    shutil.copy2(new, photo_set / "cat" / "new_one.jpg")
    changed = sorted((photo_set / "flower").glob("*.jpg"))[0]
    shutil.copy2(photo_files("flower", 1, offset=60)[0], changed)
    third = extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    assert third.n_extracted == 2 and third.n_cached == 23
    with FeatureStore(store) as fs:
        assert len(fs) == 25 and len(set(fs.paths.tolist())) == 25
        after = dict(zip(fs.paths.tolist(), fs.X))
    rel_changed = changed.relative_to(photo_set).as_posix()
    assert not np.allclose(after[rel_changed], before[rel_changed])
    unchanged = [p for p in before if p != rel_changed]
    for p in unchanged:
        np.testing.assert_array_equal(after[p], before[p])


def test_same_content_other_path_reuses_features_and_warns_label_conflict(photo_set, tmp_path, backbone):
    store = tmp_path / "s.h5"
    extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    dup_src = sorted((photo_set / "cat").glob("*.jpg"))[0]
    shutil.copy2(dup_src, photo_set / "flower" / "looks_like_a_daisy.jpg")
    summary = extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    assert summary.n_extracted == 0 and summary.n_reused == 1
    assert len(summary.label_conflicts) == 1
    assert summary.label_conflicts[0]["labels"] == ["cat", "flower"]
    assert "label noise" in summary.format()


def test_split_folders_are_respected(tmp_path, backbone):
    root = make_photo_set(tmp_path / "sf", splits={"train": (6, 0), "validation": (3, 6)})
    summary = extract(root, tmp_path / "s.h5", backbone=backbone, batch_size=8, progress=False)
    assert summary.splits == {"train": 12, "validation": 6}
    with FeatureStore(tmp_path / "s.h5") as fs:
        for p, s in zip(fs.paths.tolist(), fs.splits.tolist()):
            assert p.startswith(s + "/")
        X, y = fs.split("validation")
        assert X.shape == (6, 256) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_other_fingerprint_refused(photo_set, tmp_path, backbone):
    store = tmp_path / "s.h5"
    extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    with pytest.raises(FingerprintMismatch, match="pooling"):
        extract(photo_set, store, backbone="mobilenet_0.25", image_size=TEST_SIZE, pooling="max",
                progress=False)
    with pytest.raises(StoreError, match="float32"):
        extract(photo_set, store, backbone=backbone, dtype="float16", progress=False)
    with pytest.raises(StoreError, match="split"):
        extract(photo_set, store, backbone=backbone, validation_fraction=0.5, progress=False)


def test_float16_store_halves_features(photo_set, tmp_path, backbone):
    extract(photo_set, tmp_path / "a.h5", backbone=backbone, progress=False)
    extract(photo_set, tmp_path / "b.h5", backbone=backbone, dtype="float16", progress=False)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert b["features"].dtype == np.float16
        assert b["features"].id.get_storage_size() * 2 == a["features"].id.get_storage_size()
        np.testing.assert_allclose(a["features"][()], b["features"][()].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_second_writer_refused_while_first_writes(photo_set, tmp_path, backbone):
    store = tmp_path / "s.h5"
    extract(photo_set, store, backbone=backbone, progress=False)
    fp = backbone.fingerprint
    with StoreWriter(store, fingerprint=fp, fingerprint_id=fingerprint_id(fp)):
        with pytest.raises(StoreLocked, match="another featx process"):
            extract(photo_set, store, backbone=backbone, progress=False)
        with FeatureStore(store) as fs:  # readers are never blocked
            assert len(fs) == 24
    assert extract(photo_set, store, backbone=backbone, progress=False).n_cached == 24


def test_bad_files_are_skipped_with_reasons_and_good_ones_extracted(photo_set, tmp_path, backbone):
    from badfiles import make_bad_files

    bad_dir = photo_set / "cat"
    cases = make_bad_files(bad_dir)
    store = tmp_path / "s.h5"
    summary = extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    # a folder named like an image is walked as a folder, not listed as a file (decode tests cover it)
    expected_bad = {name: kind for name, kind in cases.items() if kind is not None and name != "a_directory.jpg"}
    expected_good = [name for name, kind in cases.items() if kind is None]
    got = {s["path"].split("/")[-1]: s for s in summary.skipped}
    for name, kind in expected_bad.items():
        assert name in got, f"{name} should have been skipped"
        assert got[name]["kind"] == kind and got[name]["reason"]
    with FeatureStore(store) as fs:
        names = {p.split("/")[-1] for p in fs.paths.tolist()}
        assert set(expected_good) <= names  # every good file extracted
        assert len(fs) == 24 + len(expected_good)
        assert {s["path"].split("/")[-1] for s in fs.skipped} == set(expected_bad)
    assert summary.skipped_by_kind and sum(summary.skipped_by_kind.values()) == len(expected_bad)
    # a rerun re-examines the bad files (they may have been fixed) but recomputes nothing good
    again = extract(photo_set, store, backbone=backbone, batch_size=8, progress=False)
    assert again.n_extracted == 0 and again.n_skipped == len(expected_bad)


def test_extract_features_in_memory_keeps_order_and_marks_bad(tmp_path, backbone):
    files = photo_files("coffee", 3)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = extract_features([files[0], bad, files[1], files[2]], backbone, batch_size=2)
    assert out.features.shape == (4, 256)
    assert out.ok.tolist() == [True, False, True, True]
    assert out.skipped[0]["index"] == 1 and out.skipped[0]["kind"] == "not_an_image"


def test_a_one_class_set_is_warned_about_at_extract_time(tmp_path, backbone):
    data = make_photo_set(tmp_path / "one", classes=("cat",), n=3)
    summary = extract(data, tmp_path / "one.h5", backbone=backbone, batch_size=4, progress=False)
    assert summary.classes == {"cat": 3}
    assert "WARNING    one class only ('cat')" in summary.format() and "featx train` will refuse" in summary.format()


def test_summary_says_where_the_time_went(photo_set, tmp_path, backbone, monkeypatch):
    """The stage times add up to the loop and point at the slow stage: a decode slowed by 30 ms an
    image is "decode-bound", a model call slowed by 0.3 s a batch is "model-bound"."""
    import time

    from featx import pipeline

    real_decode, real_predict = pipeline.decode_file, backbone.predict

    def slow_decode(*args, **kwargs):
        time.sleep(0.03)
        return real_decode(*args, **kwargs)

    def slow_predict(pixels):
        time.sleep(0.3)
        return real_predict(pixels)

    for name, patch, expected in (("decode", lambda: monkeypatch.setattr(pipeline, "decode_file", slow_decode),
                                   "decode"),
                                  ("model", lambda: monkeypatch.setattr(backbone, "predict", slow_predict), "model")):
        patch()
        s = extract(photo_set, tmp_path / f"{name}.h5", backbone=backbone, batch_size=8, workers=1, progress=False)
        monkeypatch.undo()
        stages = s.decode_wait_seconds + s.model_seconds + s.store_seconds
        assert min(s.decode_wait_seconds, s.model_seconds, s.store_seconds) >= 0
        assert 0 < stages <= s.loop_seconds * 1.001 + 1e-3
        assert s.bottleneck == expected, s.to_dict()
        d = s.to_dict()
        assert {"loop_seconds", "decode_wait_seconds", "model_seconds", "store_seconds"} <= d.keys()
        assert f"{expected}-bound" in s.format() and "waiting for decoded images" in s.format()


_NO_MODEL_RUN = """
import sys
import featx.cli
rc = featx.cli.main(sys.argv[1:])
print("KERAS-IMPORTED" if "keras" in sys.modules else "NO-KERAS")
sys.exit(rc)
"""


def _cli_without_model(*args: str):
    # a fresh process: only there does "no Keras import" mean anything (this one imported it long ago)
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", _NO_MODEL_RUN, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_noop_rerun_and_refused_store_never_build_a_model(photo_set, tmp_path, backbone):
    """All images in the store: the CLI answers from the plan (no Keras import, no model, says so);
    a store of another fingerprint is refused before any model is built."""
    store = tmp_path / "s.h5"
    extract(photo_set, store, backbone=backbone, progress=False)
    with FeatureStore(store) as fs:
        before = fs.X
    args = ["extract", str(photo_set), "--store", str(store), "--backbone", "mobilenet_0.25",
            "--image-size", str(TEST_SIZE), "--no-progress"]
    out = _cli_without_model(*args)
    assert out.returncode == 0, out.stderr
    assert "NO-KERAS" in out.stdout, out.stdout
    assert "nothing to extract: all 24 images already in the store" in out.stdout
    assert "images/s" not in out.stdout and f"fingerprint {fingerprint_id(backbone.fingerprint)}" in out.stdout
    with FeatureStore(store) as fs:
        np.testing.assert_array_equal(fs.X, before)

    out = _cli_without_model(*args, "--pooling", "max")
    assert out.returncode == 1 and "NO-KERAS" in out.stdout, out.stdout + out.stderr
    assert "different backbone configuration" in out.stderr and "pooling" in out.stderr

    # a new image: the model is built as before, and only the new image goes through it
    shutil.copy(photo_files("coffee", 1)[0], photo_set / "cat" / "new_coffee.jpg")
    summary = extract(photo_set, store, backbone="mobilenet_0.25", image_size=TEST_SIZE, progress=False)
    assert (summary.n_extracted, summary.n_cached) == (1, 24) and summary.device != "unused"
    assert summary.fingerprint_id == fingerprint_id(backbone.fingerprint)
    # a BackboneConfig is the same request as its keywords (and now nothing is left to do)
    again = extract(photo_set, store, backbone=BackboneConfig("mobilenet_0.25", image_size=TEST_SIZE), progress=False)
    assert (again.n_cached, again.device, again.fingerprint_id) == (25, "unused", summary.fingerprint_id)


def test_noop_rerun_with_unknowable_fingerprint_builds_the_model(photo_set, tmp_path):
    """Random weights: only the model can tell the fingerprint, so the plan cannot end the run."""
    store = tmp_path / "s.h5"
    first = extract(photo_set, store, backbone="mobilenet_0.25", weights="none", image_size=TEST_SIZE,
                    progress=False)
    again = extract(photo_set, store, backbone="mobilenet_0.25", weights="none", image_size=TEST_SIZE,
                    progress=False)
    assert (again.n_extracted, again.n_cached, again.fingerprint_id) == (0, 24, first.fingerprint_id)
    assert again.device != "unused" and "nothing to extract: all 24 images" in again.format()
