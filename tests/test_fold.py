"""featx.fold: BatchNormalization folded into convolutions for inference, exact to round-off."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import photo_files
from featx.backbones import Backbone
from featx.decode import decode_file
from featx.fold import fold_batchnorm


def _randomize_batchnorm(model, seed: int = 0) -> int:
    """Give every BatchNormalization non-trivial statistics (random weights leave mean 0, var 1)."""
    import keras

    rng = np.random.default_rng(seed)
    n = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([
                rng.uniform(0.5, 2.0, w.shape).astype(w.dtype) if v.path.endswith(("gamma", "moving_variance"))
                else rng.normal(0.0, 0.2, w.shape).astype(w.dtype)
                for v, w in zip(layer.weights, layer.get_weights())
            ])
            n += 1
    return n


@pytest.mark.large
@pytest.mark.parametrize("name,size", [
    ("mobilenetv2", 64), ("efficientnetb0", 64), ("resnet50", 64), ("inceptionv3", 75), ("xception", 71),
    ("mobilenetv3small", 64), ("densenet121", 64),
])
def test_folded_backbone_equals_the_stock_network(name, size):
    """Every family with BatchNormalization (plain, depthwise and separable convs; BN without scale):
    the inference model featx runs gives the stock network's features."""
    bb = Backbone.build(name, weights="none", image_size=size)
    assert _randomize_batchnorm(bb.model) > 0
    x = np.random.default_rng(1).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    expected = np.asarray(bb.model.predict_on_batch(x))
    got = bb.predict(x)  # builds the folded inference model
    assert bb.n_folded > 10
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


def test_vendored_backbone_folds_every_batchnorm_and_keeps_real_features():
    """Real weights, real photos: all 27 BN layers of MobileNet-0.25 are folded away and the features
    still equal the stock model's."""
    import keras

    bb = Backbone.build("mobilenet_0.25", weights="imagenet")
    pixels = np.stack([decode_file(f, (224, 224)).pixels for f in photo_files("cat", 4)])
    got = bb.predict(pixels)
    assert bb.n_folded == 27
    layers = bb.inference_model._flatten_layers(include_self=False)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)
    np.testing.assert_allclose(got, np.asarray(bb.model.predict_on_batch(pixels)), rtol=1e-4, atol=1e-5)


def test_only_exact_single_use_conv_batchnorm_pairs_are_folded():
    import keras

    L = keras.layers
    inp = keras.Input((12, 12, 4))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(6, 3, padding="same", name="conv_a")(inp))  # folded
    b = L.BatchNormalization(scale=False, name="bn_b")(                                          # folded
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw_b")(a))
    c = L.BatchNormalization(center=False, name="bn_c")(                                         # folded
        L.SeparableConv2D(5, 3, padding="same", use_bias=False, name="sep_c")(b))
    d_conv = L.Conv2D(5, 1, name="conv_d")(c)
    d = L.Add()([L.BatchNormalization(name="bn_d")(d_conv), d_conv])  # conv output used twice: kept
    e = L.BatchNormalization(name="bn_e")(L.Conv2D(5, 1, activation="relu", name="conv_e")(d))  # relu first: kept
    f = L.BatchNormalization(axis=1, name="bn_f")(L.Conv2D(5, 1, name="conv_f")(e))  # not per channel: kept
    model = keras.Model(inp, f)
    _randomize_batchnorm(model, seed=3)

    folded, n = fold_batchnorm(model)
    assert n == 3
    kept = {layer.name for layer in folded.layers if isinstance(layer, L.BatchNormalization)}
    assert kept == {"bn_d", "bn_e", "bn_f"}
    x = np.random.default_rng(2).normal(size=(4, 12, 12, 4)).astype("float32")
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-4, atol=1e-5)
    # the original is untouched, and a model with nothing to fold comes back as it is
    assert sum(isinstance(layer, L.BatchNormalization) for layer in model.layers) == 6
    plain = keras.Model(inp, L.Conv2D(2, 1)(inp))
    assert fold_batchnorm(plain) == (plain, 0)


def test_copied_normalization_layer_computes_with_its_copied_statistics():
    """Keras' set_weights does not refresh a Normalization layer's mean/variance (loading a file
    does): featx's copy helper must, or a folded EfficientNet would normalise with mean 0, var 1."""
    import keras

    from featx.fold import set_weights_and_state

    src = keras.layers.Normalization(axis=-1)
    src.build((None, 2, 2, 3))
    dst = keras.layers.Normalization(axis=-1)
    dst.build((None, 2, 2, 3))
    set_weights_and_state(src, [np.array([1.0, 2.0, 3.0], "float32"), np.full(3, 4.0, "float32"), np.array(0)])
    set_weights_and_state(dst, src.get_weights())
    x = np.zeros((1, 2, 2, 3), "float32")
    np.testing.assert_allclose(np.asarray(dst(x))[0, 0, 0], [-0.5, -1.0, -1.5])


def test_zero_padding_merges_into_the_conv_only_where_it_equals_same_padding():
    import keras

    L = keras.layers
    inp = keras.Input((8, 8, 4))
    a = L.DepthwiseConv2D(3, strides=2, name="dw_a")(L.ZeroPadding2D(((0, 1), (0, 1)), name="pad_a")(inp))  # merged
    b = L.Conv2D(4, 3, name="conv_b")(L.ZeroPadding2D(1, name="pad_b")(a))  # stride 1: "same" pads 1, 1: merged
    c = L.Conv2D(4, 3, strides=2, name="conv_c")(L.ZeroPadding2D(1, name="pad_c")(b))  # "same" is (0, 1): kept
    pad_d = L.ZeroPadding2D(1, name="pad_d")(c)
    d = L.Add()([L.Conv2D(4, 3, name="conv_d1")(pad_d), L.Conv2D(4, 3, name="conv_d2")(pad_d)])  # shared: kept
    e = L.Conv2D(4, 3, dilation_rate=2, name="conv_e")(L.ZeroPadding2D(2, name="pad_e")(d))  # dilated: kept
    model = keras.Model(inp, e)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.random.default_rng(1).normal(0, 0.5, w.shape).astype(w.dtype)
                               for w in layer.get_weights()])

    folded, _ = fold_batchnorm(model)
    names = {layer.name for layer in folded.layers}
    assert {"pad_a", "pad_b"}.isdisjoint(names) and {"pad_c", "pad_d", "pad_e"} <= names
    assert folded.get_layer("dw_a").padding == "same" and folded.get_layer("conv_c").padding == "valid"
    x = np.random.default_rng(2).normal(0, 1, (2, 8, 8, 4)).astype("float32")
    expected = np.asarray(model.predict_on_batch(x))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(np.asarray(folded.predict_on_batch(x)), expected, rtol=1e-5, atol=1e-5)
