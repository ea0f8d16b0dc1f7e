"""Inference graph of a frozen backbone: BatchNormalization folded into the convolution before it,
and explicit zero padding merged into the convolution after it.

A frozen network's BatchNormalization is a fixed per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. Right after a convolution it can be
folded into that convolution's kernel and bias (``k' = k * s``, ``b' = b * s + t``), which removes
a full read and write of every activation map. Keras runs BatchNormalization as separate
element-wise ops on every backend, and on a CPU those memory-bound passes are a large part of a
MobileNet's time: folding made MobileNet-0.25 1.8x, MobileNetV2 1.6x and EfficientNetB0 1.25x
faster on TensorFlow (2-core CPU, see benchmarks/README.md). Outputs agree to float32 round-off.

keras.applications pads before every stride-2 convolution with a ZeroPadding2D layer and a
"valid" convolution (MobileNet, MobileNetV2, EfficientNet). Where that padding is exactly what
"same" padding computes for the layer's input size, the convolution pads itself instead, which
saves writing and reading a padded copy of the activations. On TensorFlow with oneDNN (2-core
CPU) that made the folded MobileNet-0.25 1.17x, MobileNetV2 1.11x and EfficientNetB0 1.13x
faster again. The result is identical: the same zeros in the same places.

Only exact, single-use ``conv -> BN`` and ``ZeroPadding2D -> conv`` pairs are merged; everything
else is kept as it is. The result is for inference only: fine-tuning uses the original (whose BN
layers stay frozen).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fold_batchnorm", "set_weights_and_state"]


def set_weights_and_state(layer, weights: list) -> None:
    """``layer.set_weights(weights)``, then let a layer that derives its state from its weights
    recompute it. Keras does that when it loads a file, but not in ``set_weights``: a copied
    Normalization layer would silently keep computing with mean 0 and variance 1."""
    layer.set_weights(weights)
    if hasattr(layer, "finalize_state"):
        layer.finalize_state()


def _conv_types() -> tuple:
    """The convolutions merged with their neighbours (exact types: a subclass may compute something else)."""
    import keras

    return keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D


def _foldable_pairs(model) -> dict:
    """{conv layer name: the BatchNormalization layer that alone consumes its output}."""
    import keras

    conv_types = _conv_types()
    outputs = {id(t) for t in model.outputs}
    pairs = {}
    for bn in model.layers:
        if type(bn) is not keras.layers.BatchNormalization or len(bn._inbound_nodes) != 1:
            continue
        if bn.axis not in (-1, len(bn.input.shape) - 1):  # per-channel on the last axis only
            continue
        source = bn._inbound_nodes[0].input_tensors[0]
        conv = source._keras_history[0]
        if (
            type(conv) not in conv_types
            or len(conv._inbound_nodes) != 1
            or len(conv._outbound_nodes) != 1  # its output feeds the BN and nothing else
            or id(source) in outputs
            or conv.data_format != "channels_last"
            or getattr(conv.activation, "__name__", None) != "linear"
        ):
            continue
        pairs[conv.name] = bn
    return pairs


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zeros that "same" padding adds along one axis (TensorFlow's rule, which
    Keras follows on every backend: the odd one goes after)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _mergeable_pads(model) -> dict:
    """{conv layer name: the ZeroPadding2D layer that alone feeds it, padding exactly as "same"}."""
    import keras

    conv_types = _conv_types()
    outputs = {id(t) for t in model.outputs}
    pads = {}
    for pad in model.layers:
        if (type(pad) is not keras.layers.ZeroPadding2D or pad.data_format != "channels_last"
                or len(pad._inbound_nodes) != 1 or len(pad._outbound_nodes) != 1 or id(pad.output) in outputs):
            continue
        conv = pad._outbound_nodes[0].operation
        if (
            type(conv) not in conv_types
            or len(conv._inbound_nodes) != 1
            or conv.padding != "valid"
            or conv.data_format != "channels_last"
            or any(d != 1 for d in conv.dilation_rate)
        ):
            continue
        height, width = pad.input.shape[1:3]
        if height is None or width is None:
            continue
        same = (_same_padding(height, conv.kernel_size[0], conv.strides[0]),
                _same_padding(width, conv.kernel_size[1], conv.strides[1]))
        if tuple(tuple(p) for p in pad.padding) == same:
            pads[conv.name] = pad
    return pads


def _folded_weights(conv, bn) -> list[np.ndarray]:
    import keras

    weights = {v.path.split("/")[-1]: np.asarray(w, np.float64) for v, w in zip(bn.weights, bn.get_weights())}
    scale = 1.0 / np.sqrt(weights["moving_variance"] + bn.epsilon)
    if "gamma" in weights:
        scale = scale * weights["gamma"]
    shift = -weights["moving_mean"] * scale + weights.get("beta", 0.0)

    params = [np.asarray(w, np.float64) for w in conv.get_weights()]
    bias = params.pop() if conv.use_bias else 0.0
    if type(conv) is keras.layers.DepthwiseConv2D:
        kernel = params[0]  # (kh, kw, in, multiplier); output channel c * multiplier + m
        params[0] = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:  # Conv2D kernel (kh, kw, in, out); SeparableConv2D's pointwise kernel (1, 1, in*m, out)
        params[-1] = params[-1] * scale
    dtype = conv.get_weights()[0].dtype
    return [p.astype(dtype) for p in params] + [(bias * scale + shift).astype(dtype)]


def fold_batchnorm(model):
    """Return ``(folded_model, n_folded)``: a copy of a functional ``model`` with every exact
    ``Conv2D | DepthwiseConv2D | SeparableConv2D -> BatchNormalization`` pair merged into one
    convolution with a bias (``n_folded`` of them), and every ZeroPadding2D that equals "same"
    padding merged into the convolution it feeds, in nested functional models too. The input model
    is not changed; with nothing to merge it is returned as it is. Only valid for inference (BN in
    inference mode), which is how featx runs backbones.

    >>> import keras
    >>> base = keras.applications.MobileNet(alpha=0.25, weights=None, include_top=False,
    ...                                     input_shape=(32, 32, 3))
    >>> folded, n = fold_batchnorm(base)
    >>> n, sum(type(l).__name__ == "BatchNormalization" for l in folded.layers)
    (27, 0)
    >>> x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    >>> bool(np.allclose(base.predict_on_batch(x), folded.predict_on_batch(x), atol=1e-5))
    True
    """
    import keras

    from keras.src.models.functional import Functional

    pairs = _foldable_pairs(model)
    pads = _mergeable_pads(model)
    # Nested functional models (a keras.applications base inside a fine-tuned model) fold too.
    nested = {layer.name: fold_batchnorm(layer) for layer in model.layers if isinstance(layer, Functional)}
    nested = {name: sub for name, sub in nested.items() if sub[0] is not model.get_layer(name)}
    if not pairs and not pads and not nested:
        return model, 0
    folded_bn = {bn.name for bn in pairs.values()}
    merged_pads = {pad.name for pad in pads.values()}

    def clone_layer(layer):
        if layer.name in folded_bn:
            return layer  # never called (see call_layer); cloning it would only waste memory
        if layer.name in nested:
            return nested[layer.name][0]
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        if layer.name in pads:
            config["padding"] = "same"
        return type(layer).from_config(config)

    def call_layer(layer, *args, **kwargs):
        if layer.name in folded_bn:
            return args[0]  # the folded conv already produced what this BN would have
        if layer.name in merged_pads:
            return args[0]  # the conv after it pads by itself now
        return layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone_layer, call_function=call_layer)
    new_layers = {layer.name: layer for layer in folded.layers}
    for layer in model.layers:
        new = new_layers.get(layer.name)
        skipped = folded_bn | merged_pads | set(nested)
        if layer.name in skipped or new is None or new is layer:
            continue
        set_weights_and_state(
            new, _folded_weights(layer, pairs[layer.name]) if layer.name in pairs else layer.get_weights())
    folded.trainable = False
    return folded, len(pairs) + sum(n for _, n in nested.values())
