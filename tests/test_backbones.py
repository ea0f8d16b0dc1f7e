"""Backbone registry, weight resolution from the Keras cache, the fingerprint, and backend neutrality
(downloads: tests/test_weights_download.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEST_SIZE, photo_files
from featx.backbones import (
    REGISTRY, VENDORED_DIR, Backbone, UnknownBackbone, WeightsUnavailable, describe_backbones, get_spec,
    planned_fingerprint, resolve_weights,
)
from featx.config import BackboneConfig
from featx.decode import decode_file

VENDORED = VENDORED_DIR / "mobilenet_2_5_224_tf_no_top.h5"


def test_registry_covers_the_required_backbones():
    required = {"vgg16", "resnet50", "resnet50v2", "mobilenet", "mobilenet_0.75", "mobilenet_0.5",
                "mobilenet_0.25", "mobilenetv2", "mobilenetv3small", "mobilenetv3large", "efficientnetb0",
                "efficientnetb1", "efficientnetb2", "efficientnetb3", "efficientnetv2b0", "densenet121",
                "inceptionv3", "xception", "convnexttiny"}
    assert required <= set(REGISTRY)
    assert get_spec("MobileNet-0.25").name == "mobilenet_0.25"
    with pytest.raises(UnknownBackbone, match="choose one of"):
        get_spec("resnet9000")


@pytest.mark.large
@pytest.mark.parametrize("name", ["vgg16", "densenet121", "mobilenetv3small", "efficientnetb0"])
def test_feature_width_and_preprocessing_modes_build(name):
    # one backbone per normalisation mode (caffe, torch, in-model for V3 and EfficientNet)
    bb = Backbone.build(name, weights="none", image_size=64)
    out = bb.predict(np.full((2, 64, 64, 3), 128, np.uint8))
    assert out.shape == (2, REGISTRY[name].feature_dim) and np.isfinite(out).all()
    assert bb.fingerprint["weights"] == "none" and bb.fingerprint["weights_sha256"].startswith("random:")


def test_vendored_features_equal_keras_reference_pipeline():
    """featx's uint8-in model == keras.applications MobileNet + its own preprocess_input."""
    import keras

    bb = Backbone.build("mobilenet_0.25", weights="imagenet")
    assert bb.weights.origin == "vendored with featx"
    pixels = np.stack([decode_file(f, (224, 224)).pixels for f in photo_files("rocket", 4)])
    ref = keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=0.25, include_top=False,
                                       weights=str(VENDORED), pooling="avg")
    expected = ref.predict_on_batch(keras.applications.mobilenet.preprocess_input(pixels.astype("float32")))
    np.testing.assert_allclose(bb.predict(pixels), np.asarray(expected), rtol=1e-4, atol=1e-5)


def _efficientnet_weights_file(path, variance, size: int = 64) -> str:
    """An EfficientNetB0 weights file whose input Normalization holds the given variance and the
    ImageNet mean (random convolutions: the structure under test is the input normalisation)."""
    import keras

    net = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(size, size, 3))
    norm = next(layer for layer in net.layers if type(layer) is keras.layers.Normalization)
    count = norm.get_weights()[2]
    norm.set_weights([np.array([0.485, 0.456, 0.406], "float32"), np.asarray(variance, "float32"), count])
    net.save_weights(str(path))
    return str(path)


EFFICIENTNET_PROBE = "block2a_expand_activation"  # early enough that random weights keep a signal


@pytest.mark.large  # another CNN family, built twice (~11 s): the fast tier's backbone is MobileNet
@pytest.mark.parametrize("release_quirk", [True, False])
def test_efficientnet_input_normalisation_is_the_networks(tmp_path, release_quirk):
    """Keras' EfficientNet ImageNet release stores the ImageNet *std* as its Normalization variance
    and keras.applications adds Rescaling(1/sqrt(std)) for weights="imagenet" only (TF #49930).
    featx loads files itself, so it must add it too: features = the network on (x/255 - mean)/std.
    A file with a true variance gets no correction. Both equal an independent reference computed
    from the stock Keras network (which also checks that folding keeps the loaded statistics)."""
    import keras

    std = np.array([0.229, 0.224, 0.225])
    variance = std if release_quirk else std**2
    path = _efficientnet_weights_file(tmp_path / "effb0.weights.h5", variance)
    bb = Backbone.build("efficientnetb0", weights=path, image_size=64, layer=EFFICIENTNET_PROBE)
    assert bb.fingerprint.get("normalization_fix") == ("imagenet-stddev" if release_quirk else None)

    stock = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(64, 64, 3))
    stock.load_weights(path)
    probe = keras.Sequential([keras.Model(stock.inputs, stock.get_layer(EFFICIENTNET_PROBE).output),
                              keras.layers.GlobalAveragePooling2D()])
    pixels = np.stack([decode_file(f, (64, 64)).pixels for f in photo_files("coffee", 3)])
    mean = np.array([0.485, 0.456, 0.406])
    # The input that the stock layers (x/255, then (x - mean)/sqrt(variance)) turn into (x/255 - mean)/std:
    stock_input = 255 * (mean + (pixels / 255 - mean) * np.sqrt(variance) / std)
    expected = np.asarray(probe.predict_on_batch(stock_input.astype("float32")))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(bb.predict(pixels), expected, rtol=1e-4, atol=1e-5)  # folded model
    np.testing.assert_allclose(np.asarray(bb.model.predict_on_batch(pixels)), expected, rtol=1e-4, atol=1e-5)
    if release_quirk:  # without the correction the features would be far off
        unfixed = np.asarray(probe.predict_on_batch(pixels.astype("float32")))
        assert np.abs(unfixed - expected).max() > 100 * 1e-5


def test_offline_missing_imagenet_weights_stop_with_the_file_name_and_the_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.setenv("FEATX_OFFLINE", "1")  # online, the file is downloaded (tests/test_weights_download.py)
    with pytest.raises(WeightsUnavailable) as err:
        Backbone.build("efficientnetb0", weights="imagenet")
    msg = str(err.value)
    assert "efficientnetb0_notop.h5" in msg and "KERAS_HOME" in msg and "--weights PATH" in msg
    assert "FEATX_WEIGHTS_MIRROR" in msg and "--backbone mobilenet_0.25" in msg
    assert "never falls back" in msg


def test_keras_cache_and_weights_path_resolve_offline(tmp_path, monkeypatch):
    models = tmp_path / "kh" / "models"
    models.mkdir(parents=True)
    shutil.copy(VENDORED, models / VENDORED.name)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    spec = get_spec("mobilenet_0.25")
    assert resolve_weights(spec, "imagenet").origin == "Keras cache"
    own = tmp_path / "my_weights.h5"
    shutil.copy(VENDORED, own)
    src = resolve_weights(spec, str(own))
    assert src.kind == "file" and src.path == own.resolve()
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights(spec, str(tmp_path / "nope.h5"))
    a = Backbone.build("mobilenet_0.25", weights="imagenet", image_size=TEST_SIZE)
    b = Backbone.build("mobilenet_0.25", weights=str(own), image_size=TEST_SIZE)
    assert a.fingerprint["weights_sha256"] == b.fingerprint["weights_sha256"]
    assert a.fingerprint["weights"] == "imagenet" and b.fingerprint["weights"] == "file"
    rows = {r["name"]: r for r in describe_backbones()}
    assert rows["mobilenet_0.25"]["imagenet_offline"] and not rows["resnet50"]["imagenet_offline"]



@pytest.mark.parametrize("settings", [
    dict(image_size=TEST_SIZE), dict(image_size=128), dict(image_size=TEST_SIZE, pooling="max"),
    dict(image_size=(TEST_SIZE, 128), precision="float16"), dict(image_size=TEST_SIZE, weights=str(VENDORED)),
    dict(image_size=TEST_SIZE, weights="keras-cache"),
], ids=["96", "128", "max", "float16", "file", "keras-cache"])
def test_planned_fingerprint_is_the_built_one_without_keras(settings, tmp_path, monkeypatch):
    """What extract compares with a store before building any model must be what build records."""
    if settings.get("weights") == "keras-cache":  # imagenet weights found in the Keras cache, not the package
        (tmp_path / "models").mkdir()
        shutil.copy(VENDORED, tmp_path / "models" / VENDORED.name)
        monkeypatch.setenv("KERAS_HOME", str(tmp_path))
        settings = {**settings, "weights": "imagenet"}
    cfg = BackboneConfig("mobilenet_0.25", **settings)
    planned = planned_fingerprint(cfg)
    assert planned is not None
    assert planned == cfg.build().fingerprint


def test_planned_fingerprint_is_none_when_only_the_model_can_tell(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))  # mobilenet (1.0) would need a download
    unknown = [BackboneConfig("mobilenet_0.25", image_size=TEST_SIZE, layer="conv_pw_11_relu"),
               BackboneConfig("mobilenet_0.25", weights="none", image_size=TEST_SIZE),
               BackboneConfig("mobilenet", image_size=TEST_SIZE),
               BackboneConfig("mobilenet_0.25", weights=str(tmp_path / "missing.h5"))]
    assert [planned_fingerprint(cfg) for cfg in unknown] == [None] * 4

def test_wrong_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not fit backbone"):
        Backbone.build("mobilenet_0.5", weights=str(VENDORED), image_size=TEST_SIZE)


def test_random_weights_are_reproducible_and_labelled():
    a = Backbone.build("mobilenet_0.25", weights="none", image_size=TEST_SIZE, seed=3)
    b = Backbone.build("mobilenet_0.25", weights="none", image_size=TEST_SIZE, seed=3)
    assert a.random_weights and a.fingerprint == b.fingerprint
    x = np.random.default_rng(0).integers(0, 255, (2, TEST_SIZE, TEST_SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-5)


def test_named_layer_and_max_pooling(backbone):
    bb = Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, layer="conv_pw_11_relu", pooling="max")
    x = np.random.default_rng(0).integers(0, 255, (2, TEST_SIZE, TEST_SIZE, 3), dtype=np.uint8)
    assert bb.predict(x).shape == (2, 128)
    assert bb.fingerprint["layer"] == "conv_pw_11_relu" and bb.fingerprint["pooling"] == "max"
    assert bb.fingerprint != backbone.fingerprint
    with pytest.raises(ValueError, match="has no layer"):
        Backbone.build("mobilenet_0.25", image_size=TEST_SIZE, layer="no_such_layer")


def test_wrong_input_is_refused(backbone):
    with pytest.raises(ValueError, match="uint8"):
        backbone.predict(np.zeros((1, TEST_SIZE, TEST_SIZE, 3), np.float32))


BACKEND_SCRIPT = """
import json, sys, numpy as np
import keras
from featx.extract import extract
from featx.store import FeatureStore
assert keras.backend.backend() == sys.argv[3], keras.backend.backend()
summary = extract(sys.argv[1], sys.argv[2], backbone="mobilenet_0.25", image_size=%d, batch_size=4, progress=False)
with FeatureStore(sys.argv[2]) as fs:
    print(json.dumps({"n": summary.n_extracted, "paths": fs.paths.tolist(), "X": fs.X.tolist(),
                      "versions": fs.versions}))
""" % TEST_SIZE


@pytest.mark.large
@pytest.mark.parametrize("keras_backend", ["jax", "torch"])
def test_extraction_under_other_backends_matches_tensorflow(photo_set, tmp_path, backbone, keras_backend):
    """Real photos, real weights: the same features under JAX and torch as under TensorFlow."""
    from featx.extract import extract
    from featx.store import FeatureStore

    extract(photo_set, tmp_path / "tf.h5", backbone=backbone, batch_size=4, progress=False)
    env = {**os.environ, "KERAS_BACKEND": keras_backend, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, str(photo_set), str(tmp_path / "other.h5"),
                          keras_backend], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == 24 and res["versions"]["keras_backend"] == keras_backend
    assert keras_backend in res["versions"]  # the backend library's version is recorded too
    with FeatureStore(tmp_path / "tf.h5") as fs:
        tf_rows = dict(zip(fs.paths.tolist(), fs.X))
    for p, row in zip(res["paths"], res["X"]):
        np.testing.assert_allclose(np.array(row, np.float32), tf_rows[p], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe", "none"])
def test_normalization_layers_equal_keras_preprocess_input(mode):
    """The stock-layer normalisation in every featx model == keras.applications' preprocess_input."""
    import keras
    from keras.applications import imagenet_utils

    from featx.backbones import normalization_layers, pixels_input

    inputs, x = pixels_input((8, 8))
    for layer in normalization_layers(mode):
        x = layer(x)
    model = keras.Model(inputs, x)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    expected = pixels.astype("float32") if mode == "none" else imagenet_utils.preprocess_input(
        pixels.astype("float32"), mode=mode)
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(pixels)), expected, rtol=1e-5, atol=1e-4)


def test_native_start_up_chatter_is_filtered_and_real_errors_are_kept(capfd):
    from featx.runtime import is_native_chatter, native_stderr_filtered

    chatter = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1796171202.198502    5769 port.cc:153] oneDNN custom operations are on. You may see\n",
        b"I0000 00:00:1796171202.198935    5769 cudart_stub.cc:31] Could not find cuda drivers on your machine\n",
        b"E0000 00:00:1796171210.365743    5769 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
        b"2024-01-01 10:00:00.000001: I tensorflow/core/platform/cpu_feature_guard.cc:182] This binary is\n",
        b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the flags.\n",
    ]
    real = [
        b"E0000 00:00:1796171210.365743    5769 bfc_allocator.cc:52] Allocator ran out of memory\n",
        b"W0000 00:00:1796171210.365743    5769 op_kernel.cc:1] OP_REQUIRES failed: Invalid argument\n",
        b"featx: batch size 8\n",
    ]
    assert all(is_native_chatter(line) for line in chatter)
    assert not any(is_native_chatter(line) for line in real)
    with native_stderr_filtered():
        for line in chatter[:3] + real:  # written at the file-descriptor level, as C++ writes
            os.write(2, line)
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err  # (pytest routes sys.stderr around fd 2, so compare the lines, not order)
    assert sorted(err.splitlines(keepends=True)) == sorted([line.decode() for line in real] + ["from python\n"])
