"""Hostile and damaged files: classifier files that would run code, stores that do not match what a
command expects, and stores changed after they were written.

(tests/test_linear.py covers the skops audit itself: schemas naming eval/os.system/Popen, sklearn
types outside featx's list, a custom class with __setstate__, pickle bytes, corrupt zips. Here each
payload would leave a marker file if it ran, the file is a real featx classifier trained on real
features, and the refusal is checked through the commands that load classifiers.)
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import skops.io as sio

from conftest import TEST_SIZE, make_photo_set, run_main
from featx import linear
from featx.backbones import Backbone, fingerprint_id
from featx.classify import evaluate_store, train_store
from featx.extract import extract
from featx.linear import ModelFileError, UnsafeModelError, load_classifier
from featx.store import FeatureStore, Rows, StoreError, StoreWriter


@pytest.fixture(scope="module")
def real(tmp_path_factory, backbone):
    """A real store of flower photos and a real featx classifier trained on it."""
    tmp = tmp_path_factory.mktemp("security")
    data = make_photo_set(tmp / "photos", classes=("cat", "flower"), n=10)
    store, model = tmp / "s.h5", tmp / "m.skops"
    extract(data, store, backbone=backbone, batch_size=8, progress=False)
    train_store(store, model, classifier="logreg", penalty="l2", cv=2, n_jobs=1)
    return {"tmp": tmp, "data": data, "store": store, "model": model}


@pytest.fixture
def store(real, tmp_path) -> Path:
    """A private copy of the real store, to damage."""
    return Path(shutil.copy(real["store"], tmp_path / "s.h5"))


# -- classifier files that would run code ------------------------------------------------------------
class Planted:
    """Stands in for attacker code: building it, as an unpickler or a trusting loader would, creates
    the marker file named in its state."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).touch()
        self.__dict__.update(state)


class PickleBomb:
    """A classic pickle payload: unpickling it runs arbitrary code (here: create the marker)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.marker!r}).touch()",)


def _payload(saved: linear.SavedClassifier, estimator) -> dict:
    return {"format": linear.FILE_FORMAT, "format_version": linear.FILE_FORMAT_VERSION, "estimator": estimator,
            "metadata": json.dumps({"fingerprint": saved.fingerprint, "label_names": saved.label_names,
                                    "info": saved.info})}


def test_classifier_with_a_planted_object_is_refused_and_nothing_runs(real, tmp_path):
    marker = tmp_path / "pwned"
    saved = load_classifier(real["model"])
    saved.estimator.steps[0] = ("standardscaler", Planted(str(marker)))  # the attacker swaps in a payload
    evil = tmp_path / "evil.skops"
    sio.dump(_payload(saved, saved.estimator), evil)
    untrusted = sio.get_untrusted_types(file=evil)
    assert f"{__name__}.Planted" in untrusted
    sio.load(evil, trusted=untrusted)  # the payload is live: a loader that trusted it would run it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeModelError, match="Planted") as info:
        load_classifier(evil)
    assert f"{__name__}.Planted" in info.value.untrusted
    with pytest.raises(UnsafeModelError, match="refusing to load"):
        evaluate_store(evil, real["store"])  # what `featx evaluate` and `featx predict` call
    assert not marker.exists()


def test_pickle_file_named_skops_is_refused_and_nothing_runs(real, tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(PickleBomb(str(marker)))
    pickle.loads(data)  # the payload is live
    assert marker.exists()
    marker.unlink()
    evil = tmp_path / "model.skops"
    evil.write_bytes(data)
    with pytest.raises(ModelFileError, match="pickle/joblib files are not accepted"):
        load_classifier(evil)
    assert not marker.exists()


def test_pickled_object_array_inside_a_real_classifier_is_refused_and_nothing_runs(real, tmp_path):
    # The arrays of a skops file are .npy members; an object array in .npy format is a pickle.
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.save(buf, np.array([PickleBomb(str(marker))], dtype=object), allow_pickle=True)
    bomb = buf.getvalue()
    np.load(io.BytesIO(bomb), allow_pickle=True)  # the payload is live
    assert marker.exists()
    marker.unlink()
    evil = tmp_path / "evil.skops"
    with zipfile.ZipFile(real["model"]) as zin, zipfile.ZipFile(evil, "w") as zout:
        npy = [i.filename for i in zin.infolist() if i.filename.endswith(".npy")]
        assert npy
        for item in zin.infolist():
            zout.writestr(item, bomb if item.filename in npy else zin.read(item))
    with pytest.raises(ModelFileError):
        load_classifier(evil)
    assert not marker.exists()


# -- stores that do not match what a command expects ----------------------------------------------
def test_store_of_another_backbone_configuration_is_refused(real, backbone, tmp_path):
    other = Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, pooling="max")
    other_store = tmp_path / "max.h5"
    extract(real["data"], other_store, backbone=other, batch_size=8, progress=False)
    with pytest.raises(linear.FingerprintMismatch, match="pooling: expected 'avg', got 'max'"):
        evaluate_store(real["model"], other_store)
    with pytest.raises(StoreError, match="different backbone configuration.*pooling"):
        extract(real["data"], other_store, backbone=backbone, progress=False)


def _rewrite(store: Path, name: str, change) -> None:
    """Replace dataset `name` by change(its values), as someone editing the file with h5py would."""
    with h5py.File(store, "r+") as f:
        data = change(f[name][()])
        del f[name]
        f.create_dataset(name, data=data)


def _set_attr(store: Path, name: str, value) -> None:
    with h5py.File(store, "r+") as f:
        f.attrs[name] = value


@pytest.mark.parametrize("damage,message", [
    (lambda s: _rewrite(s, "features", lambda x: x[:, :255]), r"\(20, 255\) but the fingerprint says 256"),
    (lambda s: _rewrite(s, "features", lambda x: x.astype(np.float64)),
     "holds float64 but attribute feature_dtype says float32"),
    (lambda s: _rewrite(s, "features", lambda x: x[:-1]), r"/sha256 has shape \(20,\) for 19 feature rows"),
    (lambda s: _rewrite(s, "label", lambda y: np.full_like(y, 7)), "/label holds values outside"),
    (lambda s: _set_attr(s, "feature_dtype", "int8"), "feature_dtype is 'int8'"),
], ids=["width", "dtype", "rows", "labels", "dtype-attribute"])
def test_store_whose_datasets_disagree_with_its_attributes_is_refused(real, store, backbone, damage, message):
    damage(store)
    with pytest.raises(StoreError, match=message):
        FeatureStore(store)
    with pytest.raises(StoreError, match=message):
        train_store(store, store.with_suffix(".skops"), classifier="logreg", penalty="l2", cv=2)
    with pytest.raises(StoreError, match=message):
        evaluate_store(real["model"], store)
    with pytest.raises(StoreError, match=message):
        extract(real["data"], store, backbone=backbone, progress=False)


def test_store_whose_fingerprint_was_edited_is_refused(real, store):
    with h5py.File(store, "r+") as f:
        fp = json.loads(f.attrs["fingerprint"])
        fp["pooling"] = "max"  # claims other features than it holds
        f.attrs["fingerprint"] = json.dumps(fp, sort_keys=True)
    with pytest.raises(StoreError, match="does not hash to its fingerprint_id"):
        FeatureStore(store)
    # edited consistently (fingerprint_id too): the store opens, a classifier of the real
    # configuration refuses it, and the recorded checksum gives the edit away
    with h5py.File(store, "r+") as f:
        f.attrs["fingerprint_id"] = fingerprint_id(fp)
    with pytest.raises(linear.FingerprintMismatch, match="pooling"):
        evaluate_store(real["model"], store)
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["status"] == "mismatch" and report["attrs_ok"] is False and not report["bad_chunks"]


def test_cli_refuses_a_damaged_store_with_a_clear_message(store):
    _rewrite(store, "features", lambda x: x[:, :255])
    for args in (("info", str(store)), ("train", str(store), "--out", str(store.with_suffix(".skops")))):
        out = run_main(*args)
        assert out.returncode == 1, out.stderr
        assert "damaged or was edited outside featx" in out.stderr and "Traceback" not in out.stderr


# -- tamper detection ------------------------------------------------------------------------------
def test_untouched_store_verifies(store):
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["ok"] and report["status"] == "ok" and report["rows"] == 20, report
    out = run_main("info", str(store), "--verify")
    assert out.returncode == 0, out.stderr
    assert "verify       OK: 20 rows" in out.stdout


def test_one_changed_feature_value_fails_verify(store):
    with h5py.File(store, "r+") as f:
        f["features"][13, 100] += 1e-4  # a tiny change, still a plausible value
    out = run_main("info", str(store), "--verify", "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)["verify"]
    assert report["status"] == "mismatch" and not report["ok"]
    assert report["bad_chunks"] == [{"chunk": 0, "rows": [0, 19]}]
    assert report["bad_columns"] == [] and report["attrs_ok"] is True
    assert "features of rows 0–19" in report["message"]
    out = run_main("info", str(store), "--verify")
    assert out.returncode == 1 and "MISMATCH" in out.stdout


def _hide_a_bad_file(f: h5py.File) -> None:
    for name in ("path", "kind", "reason", "sha256", "nbytes", "mtime_ns"):  # one more skip record
        f[f"skipped/{name}"].resize((1,))


@pytest.mark.parametrize("edit,columns", [
    (lambda f: f["label"].__setitem__(3, 1 - f["label"][3]), ["label"]),  # a relabelled image
    (lambda f: f["path"].__setitem__(0, "cat/other.jpg"), ["path"]),
    (lambda f: f["split"].__setitem__(0, "validation" if f["split"][0] == b"train" else "train"), ["split"]),
    (_hide_a_bad_file, [f"skipped/{c}" for c in ("kind", "mtime_ns", "nbytes", "path", "reason", "sha256")]),
], ids=["label", "path", "split", "skipped"])
def test_changed_rows_fail_verify_and_name_the_column(store, edit, columns):
    with h5py.File(store, "r+") as f:
        edit(f)
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["status"] == "mismatch"
    assert report["bad_columns"] == columns and not report["bad_chunks"]


def test_swapped_label_names_fail_verify(store):
    with h5py.File(store, "r+") as f:
        f.attrs["label_names"] = json.dumps(list(reversed(json.loads(f.attrs["label_names"]))))
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["status"] == "mismatch" and report["attrs_ok"] is False
    assert "the attributes" in report["message"]


def test_edit_that_also_rewrites_the_block_checksum_is_still_caught(store):
    # a naive forger updates the block digest of the rows it changed, but not the total over the record
    from featx.store.checksums import CHECKSUM_ROWS, _hash_features

    with h5py.File(store, "r+") as f:
        f["features"][0, 0] = 0.0
        f["checksum/features"][...] = np.array(_hash_features(f["features"], CHECKSUM_ROWS), dtype="S64")
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["status"] == "mismatch" and not report["bad_chunks"]
    assert "the checksum record itself" in report["message"]


def test_store_from_a_featx_without_checksums_says_so_then_gets_one(real, store, backbone):
    with h5py.File(store, "r+") as f:
        del f["checksum"]  # exactly what an earlier featx wrote
    with FeatureStore(store) as fs:
        assert len(fs) == 20  # still a valid store
        report = fs.verify()
    assert report["status"] == "no_checksum" and not report["ok"]
    assert "no checksum recorded" in report["message"]
    out = run_main("info", str(store), "--verify")
    assert out.returncode == 1 and "no checksum recorded" in out.stdout and "Traceback" not in out.stderr
    summary = extract(real["data"], store, backbone=backbone, batch_size=8, progress=False)
    assert summary.n_extracted == 0  # nothing recomputed: the store is rewritten once with checksums
    with FeatureStore(store) as fs:
        assert fs.verify()["ok"]


def test_block_checksums_locate_a_change_in_a_large_store(tmp_path):
    # 2,500 rows (three blocks of 1,024): synthetic rows, as only the store is under test here
    fp = {"backbone": "synthetic", "feature_dim": 64}
    n = 2500
    rng = np.random.default_rng(0)
    rows = Rows(rng.standard_normal((n, 64)).astype(np.float32), np.array([f"{i:064x}" for i in range(n)]),
                np.array([f"c{i % 2}/{i}.jpg" for i in range(n)]), np.array([f"c{i % 2}" for i in range(n)]),
                np.full(n, "train"), np.full(n, 100, np.int64), np.full(n, 1, np.int64))
    store = tmp_path / "big.h5"
    with StoreWriter(store, fingerprint=fp, fingerprint_id=fingerprint_id(fp)) as writer:
        writer.append(rows)
    with h5py.File(store, "r+") as f:
        f["features"][1500, 7] *= -1
    with FeatureStore(store) as fs:
        report = fs.verify()
    assert report["feature_chunks"] == 3
    assert report["bad_chunks"] == [{"chunk": 1, "rows": [1024, 2047]}]
