"""Views averaged before caching and several layers in one pass (featx.featuresets), on real photos
and the vendored MobileNet-0.25 at the test size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TEST_SIZE, make_photo_set, run_cli
from photos import photo_files

from featx.backbones import Backbone
from featx.config import BackboneConfig
from featx.featuresets import feature_columns, parse_layers

LAYERS = ("final", "final:max", "conv_pw_11_relu")


def _pixels(n_per_class: int = 2) -> np.ndarray:
    files = photo_files("cat", n_per_class) + photo_files("rocket", n_per_class)
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((TEST_SIZE, TEST_SIZE))) for f in files])


@pytest.fixture(scope="module")
def flip_backbone():
    return Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, views="flip")


@pytest.fixture(scope="module")
def layered_backbone():
    return Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, layers=LAYERS)


def test_flip_equals_the_mean_of_the_image_and_its_mirror(backbone, flip_backbone):
    x = _pixels()
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    one, mirror = backbone.predict(x), backbone.predict(mirrored)
    assert np.abs(one - mirror).max() > 1e-2  # the photos are not symmetric: the views differ
    np.testing.assert_allclose(flip_backbone.predict(x), (one + mirror) / 2, rtol=1e-5, atol=1e-5)
    # the stock (unfolded) model computes the same average
    np.testing.assert_allclose(np.asarray(flip_backbone.model.predict_on_batch(x)), (one + mirror) / 2,
                               rtol=1e-4, atol=1e-4)
    # a mirrored image has the same flip features: the average is symmetric
    np.testing.assert_allclose(flip_backbone.predict(mirrored), flip_backbone.predict(x), rtol=1e-5, atol=1e-5)


def test_flip_crops_adds_the_central_crop(backbone, flip_backbone):
    crops = Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, views="flip+crops")
    x = _pixels(1)
    out = crops.predict(x)
    assert out.shape == (2, 256) and np.isfinite(out).all()
    assert crops.fingerprint["views"] == "flip+crops"
    # four views: (image + mirror)/2 is half of it; the crop's pair is the other half
    crop_part = 2 * out - flip_backbone.predict(x)
    assert np.abs(crop_part - flip_backbone.predict(x)).max() > 1e-2


def test_views_are_in_the_fingerprint_only_when_used(backbone, flip_backbone):
    assert "views" not in backbone.fingerprint and "feature_sets" not in backbone.fingerprint
    rest = {k: v for k, v in flip_backbone.fingerprint.items() if k != "views"}
    assert rest == backbone.fingerprint and flip_backbone.fingerprint["views"] == "flip"
    # the fingerprint extract plans with before building a model says the same (layers: unknown until built)
    from featx.backbones import planned_fingerprint

    cfg = BackboneConfig("mobilenet_0.25", image_size=TEST_SIZE, views="flip")
    assert planned_fingerprint(cfg) == flip_backbone.fingerprint
    assert planned_fingerprint(BackboneConfig("mobilenet_0.25", image_size=TEST_SIZE, layers=("final",))) is None


def test_a_flip_store_refuses_one_view_rows(tmp_path, backbone, flip_backbone):
    from featx.extract import extract
    from featx.store import FeatureStore, FingerprintMismatch

    data = make_photo_set(tmp_path / "photos", n=3)
    store = tmp_path / "s.h5"
    summary = extract(data, store, backbone=flip_backbone, batch_size=4, progress=False)
    assert summary.views == "flip" and summary.model_seconds_per_image > 0  # the cost of the views, reported
    assert "flip views" in summary.format()
    with pytest.raises(FingerprintMismatch):
        extract(data, store, backbone=backbone, batch_size=4, progress=False)
    with FeatureStore(store) as fs:
        assert fs.fingerprint["views"] == "flip" and len(fs) == 6
        assert fs.info()["views"] == "flip"


def test_layers_are_column_slices_equal_to_single_layer_builds(backbone, layered_backbone):
    x = _pixels()
    row = layered_backbone.predict(x)
    sets = {s["name"]: s for s in layered_backbone.fingerprint["feature_sets"]}
    assert list(sets) == ["final:avg", "final:max", "conv_pw_11_relu:avg"]
    assert row.shape == (4, 256 + 256 + 128) == (4, layered_backbone.feature_dim)
    single = {
        "final:avg": backbone,
        "final:max": Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, pooling="max"),
        "conv_pw_11_relu:avg": Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, layer="conv_pw_11_relu"),
    }
    for name, bb in single.items():
        _, cols = feature_columns(layered_backbone.fingerprint, name)
        assert cols.stop - cols.start == bb.feature_dim
        np.testing.assert_allclose(row[:, cols], bb.predict(x), rtol=1e-5, atol=1e-5)


def test_views_and_layers_together(flip_backbone):
    both = Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, views="flip", layers=("final", "conv_pw_11_relu"))
    x = _pixels(1)
    np.testing.assert_allclose(both.predict(x)[:, :256], flip_backbone.predict(x), rtol=1e-5, atol=1e-5)


def test_bad_settings_fail_with_one_clear_error():
    with pytest.raises(ValueError, match="views must be one of"):
        BackboneConfig("mobilenet_0.25", views="mirror").check()
    with pytest.raises(ValueError, match="pooling must be one of"):
        parse_layers("final:median")
    with pytest.raises(ValueError, match="twice"):
        parse_layers("final,final:avg")
    with pytest.raises(ValueError, match="not both"):
        BackboneConfig("mobilenet_0.25", layer="conv_pw_11_relu", layers=("final",)).check()
    with pytest.raises(ValueError, match="has no layer 'nope'"):
        Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, layers=("final", "nope"))


def test_config_round_trip_and_canonical_layer_names():
    cfg = BackboneConfig("mobilenet_0.25", image_size=96, views="flip", layers="final,conv_pw_11_relu:max").check()
    assert cfg.layers == ("final:avg", "conv_pw_11_relu:max")
    assert BackboneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.shared() is cfg.shared() and cfg.shared().fingerprint["views"] == "flip"


@pytest.fixture(scope="module")
def layered_store(tmp_path_factory, layered_backbone):
    from featx.extract import extract

    tmp = tmp_path_factory.mktemp("layered")
    data = make_photo_set(tmp / "photos", classes=("cat", "flower"), n=12)
    store = tmp / "layered.h5"
    extract(data, store, backbone=layered_backbone, batch_size=8, progress=False)
    return data, store


def test_train_on_a_feature_set_all_or_the_best(layered_store, tmp_path):
    from featx.classify import evaluate_store, train_store
    from featx.linear import load_classifier
    from featx.store import FeatureStore

    data, store = layered_store
    with FeatureStore(store) as fs:
        assert list(fs.feature_sets) == ["final:avg", "final:max", "conv_pw_11_relu:avg"]
        assert fs.info()["feature_sets"]["conv_pw_11_relu:avg"] == [512, 640]
    one = train_store(store, tmp_path / "one.skops", classifier="logreg", penalty="l2", cv=3,
                      features="conv_pw_11_relu:avg")
    saved = load_classifier(tmp_path / "one.skops")
    assert one.features == "conv_pw_11_relu:avg" and saved.info["feature_columns"] == [512, 640]
    assert saved.estimator.n_features_in_ == 128
    assert evaluate_store(tmp_path / "one.skops", store)["accuracy"] > 0.5
    whole = train_store(store, tmp_path / "all.skops", classifier="logreg", penalty="l2", cv=3, features="all")
    assert load_classifier(tmp_path / "all.skops").estimator.n_features_in_ == 640 and whole.features == "all"
    best = train_store(store, tmp_path / "best.skops", classifier="logreg", penalty="l2", cv=3, features="best")
    scores = {s["features"]: s["cv_score_mean"] for s in best.feature_scores}
    assert list(scores) == ["final:avg", "final:max", "conv_pw_11_relu:avg", "all"]
    assert scores[best.features] == max(scores.values())
    with pytest.raises(ValueError, match="no feature set 'conv_pw_1'.*final:avg"):
        train_store(store, tmp_path / "x.skops", features="conv_pw_1")


def test_predict_computes_the_classifiers_feature_set(layered_store, tmp_path):
    from featx.classify import predict_images, train_store
    from featx.linear import load_classifier, predict_scores
    from featx.store import FeatureStore

    data, store = layered_store
    train_store(store, tmp_path / "m.skops", classifier="logreg", penalty="l2", cv=3, features="final:max")
    files = sorted(str(p) for p in data.rglob("*.jpg"))[:6]
    out = predict_images(tmp_path / "m.skops", files, batch_size=8)
    saved = load_classifier(tmp_path / "m.skops")
    with FeatureStore(store) as fs:  # the same images' stored rows, sliced the same way
        rows = {p: i for i, p in enumerate(fs.paths.tolist())}
        X = fs.X[[rows[os.path.relpath(f, data)] for f in files]][:, 256:512]
        names = saved.label_names
    pred, _ = predict_scores(saved.estimator, X)
    assert [p["label"] for p in out["predictions"]] == [names[int(c)] for c in pred]


def test_feature_extractor_views_and_layers():
    from sklearn.base import clone

    from featx.sklearn import FeatureExtractor

    fx = FeatureExtractor(backbone="mobilenet_0.25", image_size=TEST_SIZE, views="flip", layers=("final", "final:max"))
    assert clone(fx).get_params()["views"] == "flip"
    x = _pixels(1)
    out = fx.fit().transform(x)
    assert out.shape == (2, 512) and fx.n_features_out_ == 512
    np.testing.assert_allclose(out, fx._get_backbone().predict(x), rtol=1e-6)
    assert fx.fingerprint_["views"] == "flip"
    with pytest.raises(ValueError, match="views must be one of"):
        FeatureExtractor(backbone="mobilenet_0.25", views="two").fit()


@pytest.mark.large
def test_cli_extract_views_layers_info_and_train_features(tmp_path):
    data = make_photo_set(tmp_path / "photos", n=8)
    store = tmp_path / "s.h5"
    r = run_cli("extract", str(data), "--store", str(store), "--backbone", "mobilenet_0.25", "--image-size",
                str(TEST_SIZE), "--views", "flip", "--layers", "final,final:max", "--batch-size", "8",
                "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    r = run_cli("info", str(store))
    assert "sets         final:avg [0:256], final:max [256:512]; views flip" in r.stdout, r.stdout
    r = run_cli("train", str(store), "--out", str(tmp_path / "m.skops"), "--features", "best", "--cv", "3")
    assert r.returncode == 0, r.stderr
    assert "kept feature set" in r.stdout and "final:max" in r.stdout
    r = run_cli("train", str(store), "--out", str(tmp_path / "m.skops"), "--features", "x", "--sgd")
    assert r.returncode == 2 and "--features goes with in-memory training" in r.stderr


@pytest.mark.large
def test_flip_view_extracts_under_jax(tmp_path):
    data = make_photo_set(tmp_path / "photos", n=3)
    code = f"""
import numpy as np
from featx.backbones import Backbone
from featx.extract import extract
from featx.store import FeatureStore
import keras
assert keras.backend.backend() == "jax"
bb = Backbone.build("mobilenet_0.25", image_size={TEST_SIZE}, views="flip", layers=("final", "final:max"))
extract({str(data)!r}, {str(tmp_path / 's.h5')!r}, backbone=bb, batch_size=4, progress=False)
one = Backbone.build("mobilenet_0.25", image_size={TEST_SIZE})
x = np.random.default_rng(0).integers(0, 256, (2, {TEST_SIZE}, {TEST_SIZE}, 3), dtype=np.uint8)
want = (one.predict(x) + one.predict(np.ascontiguousarray(x[:, :, ::-1]))) / 2
np.testing.assert_allclose(bb.predict(x)[:, :256], want, rtol=1e-4, atol=1e-4)
with FeatureStore({str(tmp_path / 's.h5')!r}) as fs:
    print(len(fs), fs.feature_dim, fs.fingerprint["views"])
"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-3:] == ["6", "512", "flip"]
