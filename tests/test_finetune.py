"""Parameter transfer: LP-FT fine-tuning on real photos with the real vendored backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import TEST_SIZE, make_photo_set, run_cli
from featx import finetune as ft
from featx.backbones import Backbone
from featx.config import BackboneConfig
from featx.decode import decode_file
from featx.linear import UnsafeModelError, train
from featx.sources import from_directory

pytestmark = pytest.mark.large  # the slow tier: run by the full suite, left out by -m "not large"

CLASSES = ("cat", "flower")


@pytest.fixture(scope="module")
def photo_splits(tmp_path_factory):
    """Split folders: 24 train and 8 validation photos per class."""
    return make_photo_set(tmp_path_factory.mktemp("ft") / "photos", classes=CLASSES,
                           splits={"train": (24, 0), "validation": (8, 24)})


@pytest.fixture(scope="module")
def finetuned(photo_splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("ftmodel") / "photos.keras"
    result = ft.finetune(photo_splits, out, backbone="mobilenet_0.25", image_size=TEST_SIZE, epochs=3,
                         batch_size=16, patience=2, lr=3e-4, seed=0)
    return result, out


def _pixels(paths) -> np.ndarray:
    return np.stack([decode_file(p, (TEST_SIZE, TEST_SIZE)).pixels for p in paths])


@pytest.mark.parametrize("classes", [CLASSES, ("cat", "flower", "rocket")], ids=["binary", "3-class"])
def test_head_from_the_probe_predicts_exactly_what_the_probe_predicts(tmp_path, backbone, classes):
    """LP-FT starts where feature transfer ended: the untrained model == scaler → logistic regression."""
    root = make_photo_set(tmp_path / "set", classes=classes, n=10)
    image_set = from_directory(root)
    pixels = _pixels([it.path for it in image_set.items])
    y = np.array([image_set.label_names.index(it.label) for it in image_set.items])
    probe = train(backbone.predict(pixels), y, classifier="logreg", penalty="l2", cv=2).estimator
    model = ft.build_model(backbone, len(classes), augment=ft.AUGMENTATIONS)
    model.get_layer("featx_head").set_weights(list(ft.probe_head_weights(probe, len(classes))))
    # inference mode: augmentation and dropout inactive
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(pixels)), probe.predict_proba(backbone.predict(pixels)),
                               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name, last_two", [
    ("mobilenet_0.25", ["12", "13"]),
    ("mobilenetv2", ["block_16", "Conv_1"]),
    ("efficientnetb0", ["block7a", "top"]),
    ("resnet50", ["conv5_block2", "conv5_block3"]),
])
def test_unfreeze_takes_whole_top_blocks_and_never_batchnorm(name, last_two):
    bb = Backbone.build(name, weights="none", image_size=64)
    base = ft.inner_base(bb)
    assert ft.unfreeze_top(base, 2) == last_two
    blocks = dict(ft.layer_blocks(base))
    top_layers = {id(l) for key in last_two for l in blocks[key]}
    for layer in base.layers:
        kind = type(layer).__name__
        if kind in ("BatchNormalization", "Normalization") or not layer.weights:
            assert not layer.trainable_weights, layer.name
        else:
            assert bool(layer.trainable_weights) == (id(layer) in top_layers), layer.name
    assert ft.unfreeze_top(base, "all") == [key for key, _ in ft.layer_blocks(base)]
    assert ft.unfreeze_top(base, 0) == [] and not base.trainable_weights


def test_finetune_trains_the_top_keeps_the_rest_and_records_everything(finetuned, photo_splits):
    result, out = finetuned
    assert result.label_names == list(CLASSES) and result.n_fit + result.n_monitor == 48
    assert result.n_monitor >= 2 and result.probe["features_from"] == "computed"
    h = result.history
    assert h["epoch"][0] == 0 and h["phase"][0] == "probe" and h["loss"][0] is None
    assert h["phase"][1:] == ["finetune"] * (len(h["epoch"]) - 1) and 1 <= len(h["epoch"]) - 1 <= 3
    # the kept epoch is the best on the monitor set, the starting point included
    assert result.best["val_loss"] == min(h["val_loss"]) == h["val_loss"][result.best_epoch]

    import keras

    model = keras.saving.load_model(out)
    start = Backbone.build("mobilenet_0.25", image_size=TEST_SIZE)
    ref = ft.inner_base(start)
    tuned = next(l for l in model.layers if isinstance(l, keras.Model))
    for name in ("conv1", "conv_pw_5", "conv_dw_11"):  # below the unfrozen blocks: untouched
        for a, b in zip(ref.get_layer(name).get_weights(), tuned.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(ref.get_layer("conv_pw_13_bn").get_weights(), tuned.get_layer("conv_pw_13_bn").get_weights()):
        np.testing.assert_array_equal(a, b)  # BatchNormalization frozen, statistics included
    top_changed = any(not np.array_equal(a, b) for a, b in zip(ref.get_layer("conv_pw_13").get_weights(),
                                                                 tuned.get_layer("conv_pw_13").get_weights()))
    assert top_changed == (result.best_epoch > 0)

    # the kept weights really are the ones that scored best_val_loss on the monitor set
    items = [it for it in ft.assign_splits(from_directory(photo_splits)).items if it.split == "train"]
    _, monitor = ft.carve_monitor_split(items, 0.1, 0)
    probs = np.asarray(model.predict_on_batch(_pixels([it.path for it in monitor])))
    y = np.array([result.label_names.index(it.label) for it in monitor])
    ce = -np.mean(np.log(probs[np.arange(len(y)), y]))
    decay = 1e-4 * float(np.sum(model.get_layer("featx_head").get_weights()[0] ** 2))
    assert ce + decay == pytest.approx(result.best["val_loss"], rel=1e-3, abs=1e-4)
    # featx's own inference runs the BatchNormalization-folded copy: same probabilities
    fm = ft.load_model(out)
    np.testing.assert_allclose(fm.predict(_pixels([it.path for it in monitor])), probs, rtol=1e-4, atol=1e-6)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in fm._inference_model._flatten_layers())

    with zipfile.ZipFile(out) as zf:
        meta = json.loads(zf.read("featx.json"))
    assert meta["label_names"] == list(CLASSES) and meta["backbone"] == start.fingerprint
    assert meta["data"]["layout"] == "split_folders" and len(meta["train_sha256"]) == 48


def test_saved_model_loads_in_safe_mode_without_featx(finetuned, photo_splits):
    _, out = finetuned
    script = ("import sys, keras, numpy as np\n"
              "m = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
              "p = np.asarray(m.predict_on_batch(np.zeros((2,) + tuple(m.input_shape[1:]), 'uint8')))\n"
              "assert not any(k.startswith('featx') for k in sys.modules), 'featx was imported'\n"
              "print(m.inputs[0].dtype, p.shape, float(p.sum(axis=1).mean()))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300,
                          cwd=str(out.parent), env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    dtype, *_, total = proc.stdout.split()
    assert dtype == "uint8" and float(total) == pytest.approx(1.0, abs=1e-5)


def test_predict_and_evaluate_commands_take_the_finetuned_model(finetuned, photo_splits, tmp_path):
    _, out = finetuned
    proc = run_cli("evaluate", str(out), str(photo_splits), "--split", "validation", "--json",
                   "--confusion-png", str(tmp_path / "cm.png"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert res["n"] == 16 and res["model_name"] == "fine-tuned" and res["n_seen_in_training"] == 0
    assert sum(map(sum, res["confusion_matrix"])) == 16 and (tmp_path / "cm.png").stat().st_size > 1000
    accuracy = res["accuracy"]

    val = sorted((photo_splits / "validation").rglob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(val[0].read_bytes()[:300])
    proc = run_cli("predict", str(out), *map(str, val), str(broken), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = json.loads(proc.stdout)
    assert len(pred["predictions"]) == 16 and [s["path"] for s in pred["skipped"]] == [str(broken)]
    for p in pred["predictions"]:
        assert p["label"] in CLASSES and sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    right = sum(p["label"] == os.path.basename(os.path.dirname(p["path"])) for p in pred["predictions"])
    assert right / 16 == pytest.approx(accuracy)


def test_lambda_layer_is_refused_unless_explicitly_allowed(tmp_path):
    import keras

    marker = tmp_path / "code-ran"
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = keras.layers.Rescaling(1.0)(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    path = tmp_path / "lambda.keras"
    ft.save_model(model, path, {"featx_model": "finetuned", "format_version": 1, "label_names": ["a", "b"],
                                "backbone": {"backbone": "x"}})
    with pytest.raises(UnsafeModelError, match="Lambda"):
        ft.load_model(path)
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(image)
    proc = run_cli("predict", str(path), str(image), "--json")
    assert proc.returncode == 1 and "Lambda" in proc.stderr and "--allow-unsafe-model" in proc.stderr
    assert not marker.exists()
    trusted = ft.predict_images(path, [image], allow_unsafe=True)  # what --allow-unsafe-model does
    assert trusted["predictions"][0]["label"] in ("a", "b")


def test_a_plain_keras_file_or_junk_is_not_taken_for_a_featx_model(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    plain = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Rescaling(1.0)(inputs))))
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(Exception, match="not one saved by `featx finetune`"):
        ft.load_model(tmp_path / "plain.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(Exception, match="not a Keras"):
        ft.load_model(tmp_path / "junk.keras")


def test_arguments_are_checked_before_any_work(photo_splits, tmp_path):
    assert ft.parse_augment("flip, zoom,none") == ("flip", "zoom")
    assert ft.parse_augment(None) == () and ft.parse_augment("none") == ()
    cases = [
        ({"augment": "flip,blur"}, "unknown augmentation"),
        ({"head_init": "zeros"}, "head_init"),
        ({"unfreeze": "some"}, "unfreeze"),
        ({"monitor": "loss"}, "monitor"),
        ({"monitor_fraction": 0.7}, "monitor fraction"),
        ({"mixed_precision": "float8"}, "float16 or bfloat16"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ft.FinetuneError, match=message):
            ft.finetune(photo_splits, tmp_path / "m.keras", backbone="mobilenet_0.25", **kwargs)
    with pytest.raises(ft.FinetuneError, match=r"\.keras"):
        ft.finetune(photo_splits, tmp_path / "m.h5", backbone="mobilenet_0.25")
    one_class = make_photo_set(tmp_path / "one", classes=("cat",), n=4)
    with pytest.raises(ft.FinetuneError, match="at least 2 classes"):
        ft.finetune(one_class, tmp_path / "m.keras", backbone="mobilenet_0.25")


def test_random_head_mixed_precision_and_class_weights(tmp_path):
    """Phase one with a fresh head, bfloat16 compute, balanced class weights: trains and loads."""
    root = make_photo_set(tmp_path / "set", n=10)
    out = tmp_path / "m.keras"
    result = ft.finetune(root, out, backbone="mobilenet_0.25", image_size=64, epochs=1, head_init="random",
                         head_epochs=1, batch_size=8, mixed_precision="bfloat16", class_weight="balanced",
                         augment="flip,shear,translate", monitor="val_accuracy", monitor_fraction=0.2)
    assert result.probe is None and result.history["phase"] == ["head", "finetune"]
    assert result.settings["mixed_precision"] == "mixed_bfloat16"
    assert all(np.isfinite(v) for v in result.history["loss"])
    fm = ft.load_model(out)
    assert fm.model.get_layer("featx_head").dtype_policy.name == "float32"
    assert fm.predict(np.zeros((1, 64, 64, 3), np.uint8)).dtype == np.float32


def test_the_command_and_settings_objects_train_the_same_model(tmp_path):
    """`featx finetune` (keywords) and finetune(backbone=BackboneConfig, settings=FinetuneSettings) agree."""
    root = make_photo_set(tmp_path / "set", n=10)
    proc = run_cli("finetune", str(root), "--out", str(tmp_path / "cli.keras"), "--backbone", "mobilenet_0.25",
                   "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_command = json.loads(proc.stdout)
    result = ft.finetune(root, tmp_path / "objects.keras", backbone=BackboneConfig("mobilenet_0.25", image_size=64),
                         settings=ft.FinetuneSettings(epochs=1, batch_size=8, seed=3))
    assert result.settings == by_command["settings"] and result.settings["seed"] == 3
    assert by_command["history"]["phase"] == ["probe", "finetune"] and by_command["probe"] == result.probe
    for key in ("val_loss", "val_accuracy"):
        assert result.history[key] == pytest.approx(by_command["history"][key], rel=1e-5)
    for a, b in zip(ft.load_model(tmp_path / "cli.keras").model.get_weights(),
                    ft.load_model(tmp_path / "objects.keras").model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


JAX_SCRIPT = """
import json, sys, keras
from featx.finetune import finetune
assert keras.backend.backend() == "jax", keras.backend.backend()
r = finetune(sys.argv[1], sys.argv[2], backbone="mobilenet_0.25", image_size=64, epochs=1, batch_size=8)
print(json.dumps({"history": r.history, "n_fit": r.n_fit}))
"""


def test_finetune_under_the_jax_backend(tmp_path):
    root = make_photo_set(tmp_path / "set", n=10)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(root), str(tmp_path / "jax.keras")],
                          capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["history"]["phase"] == ["probe", "finetune"] and res["n_fit"] > 0
    assert (tmp_path / "jax.keras").stat().st_size > 100_000
