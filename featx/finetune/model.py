"""The fine-tuned model: uint8 pixels → augmentation → backbone → softmax head, and which blocks train.

Blocks are the backbone's layers grouped as the architecture groups them (all layers of a block
unfreeze together); BatchNormalization never trains (its statistics and affine terms come from
ImageNet, as in the Keras fine-tuning guide). The head can start as the linear probe: the fitted
StandardScaler → LogisticRegression folded into the Dense layer's weights.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from featx.backbones import Backbone, normalization_layers, pixels_input
from featx.finetune.settings import DEFAULT_AUGMENT, FinetuneError, FinetuneSettings

# Layers that never train: BatchNormalization stays frozen (its statistics and affine terms come
# from ImageNet; the Keras fine-tuning guide keeps them so), the input normalisation is constant.
_NEVER_TRAINED = ("BatchNormalization", "Normalization", "Rescaling")

_BLOCK_PATTERNS = (
    re.compile(r"^(conv\d+_block\d+)_"),  # ResNet, DenseNet: conv5_block3_…
    re.compile(r"^(block_?\d+[a-z]?)_"),  # MobileNetV2 block_16_…, EfficientNet block7a_…, VGG, Xception
    re.compile(r"^conv_(?:dw|pw|pad)_(\d+)"),  # MobileNet v1: conv_dw_13 + conv_pw_13 are one block
    re.compile(r"^(expanded_conv(?:_\d+)?)_"),  # MobileNetV3
    re.compile(r"^(.*stage_\d+_block_\d+)_"),  # ConvNeXt
)
_SUFFIXES = re.compile(r"(_conv|_bn|_BN|_relu|_act|_activation)$")


# -- blocks ------------------------------------------------------------------------------------------
def _block_key(name: str) -> str:
    for pattern in _BLOCK_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    # Layers outside numbered blocks (top_conv + top_bn, Conv_1 + Conv_1_bn) group by their stem.
    return _SUFFIXES.sub("", name)


def layer_blocks(base) -> list[tuple[str, list]]:
    """The base model's layers grouped into blocks, bottom to top; only blocks with weights to train.

    >>> import keras
    >>> base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(64, 64, 3),
    ...                                     alpha=0.25)
    >>> [name for name, _ in layer_blocks(base)[-3:]]
    ['11', '12', '13']
    """
    groups: list[tuple[str, list]] = []
    for layer in base.layers:
        key = _block_key(layer.name)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(layer)
        else:
            groups.append((key, [layer]))
    return [(key, layers) for key, layers in groups if any(_trainable_kind(l) for l in layers)]


def _trainable_kind(layer) -> bool:
    return bool(layer.weights) and type(layer).__name__ not in _NEVER_TRAINED


def unfreeze_top(base, unfreeze: int | str) -> list[str]:
    """Make the top `unfreeze` blocks trainable ("all": every block); returns their names."""
    blocks = layer_blocks(base)
    if unfreeze == "all":
        chosen = blocks
    else:
        chosen = blocks[len(blocks) - int(unfreeze):] if int(unfreeze) > 0 else []
    base.trainable = True  # containers must be trainable for their sub-layers to be
    for layer in base.layers:
        layer.trainable = False
    for _, layers in chosen:
        for layer in layers:
            layer.trainable = _trainable_kind(layer)
    return [key for key, _ in chosen]


# -- model ---------------------------------------------------------------------------------------------
def augmentation_layers(augment: Sequence[str], seed: int) -> list:
    """Random layers as in the Keras guides and the classic flow_from_directory examples (0..255 input)."""
    import keras

    L = keras.layers
    make = {
        "flip": lambda: L.RandomFlip("horizontal", seed=seed, name="augment_flip"),
        "rotate": lambda: L.RandomRotation(0.05, seed=seed + 1, name="augment_rotate"),  # ±18°
        "zoom": lambda: L.RandomZoom(0.15, seed=seed + 2, name="augment_zoom"),
        # One-sided range: Keras 3.15 saves a symmetric factor as [-0.1, 0.1] and then refuses to load
        # it; with the random horizontal flip the shear still goes both ways.
        "shear": lambda: L.RandomShear((0.0, 0.1), (0.0, 0.1), seed=seed + 3, name="augment_shear"),
        "translate": lambda: L.RandomTranslation(0.1, 0.1, seed=seed + 4, name="augment_translate"),
        "contrast": lambda: L.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5, name="augment_contrast"),
    }
    return [make[name]() for name in augment]


def inner_base(bb: Backbone):
    """The keras.applications model inside a featx backbone: the layers that fine-tuning unfreezes."""
    import keras

    for layer in bb.model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise FinetuneError(f"backbone {bb.spec.name} has no inner keras.applications model")


def build_model(bb: Backbone, n_classes: int, *, augment: Sequence[str] = DEFAULT_AUGMENT,
                dropout: float = 0.2, l2: float = 1e-4, seed: int = 0):
    """uint8 pixels → augmentation (training only) → backbone (BN in inference mode) → head (softmax)."""
    import keras

    base = inner_base(bb)
    inputs, x = pixels_input(bb.image_size)
    for layer in augmentation_layers(augment, seed):
        x = layer(x)
    for layer in normalization_layers(bb.spec.preprocessing):
        x = layer(x)
    x = base(x, training=False)  # BatchNormalization keeps ImageNet statistics, also when unfrozen
    pool = keras.layers.GlobalMaxPooling2D if bb.fingerprint["pooling"] == "max" else keras.layers.GlobalAveragePooling2D
    x = pool(name="featx_pool")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="featx_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=keras.regularizers.L2(l2),
                                 dtype="float32", name="featx_head")(x)  # float32 softmax under mixed precision
    return keras.Model(inputs, outputs, name=f"featx_finetuned_{bb.spec.name.replace('.', '_')}")


def build_frozen_model(bb: Backbone, n_classes: int, settings: FinetuneSettings):
    """The model of `settings` with its backbone frozen; returns (model, the inner backbone)."""
    with dtype_policy(settings.mixed_precision):
        model = build_model(bb, n_classes, augment=settings.augment, dropout=settings.dropout, l2=settings.l2,
                            seed=settings.seed)
    base = inner_base(bb)
    base.trainable = False
    return model, base


def probe_head_weights(probe, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel (D, K) and bias (K,) of a softmax layer equal to a fitted StandardScaler → LogisticRegression.

    ``W((x - μ)/σ) + b = (W/σ) x + (b - W μ/σ)``. A binary model has one logit z for class 1; the
    softmax of [0, z] is sigmoid(z), so class 0 gets a zero column.
    """
    scaler, clf = probe.named_steps["scale"], probe.named_steps["clf"]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    coef = np.asarray(clf.coef_, np.float64) / scale
    intercept = np.asarray(clf.intercept_, np.float64) - coef @ scaler.mean_
    classes = [int(c) for c in clf.classes_]
    kernel = np.zeros((coef.shape[1], n_classes))
    bias = np.zeros(n_classes)
    if len(classes) == 2 and coef.shape[0] == 1:
        kernel[:, classes[1]], bias[classes[1]] = coef[0], intercept[0]
    else:
        for row, c in enumerate(classes):
            kernel[:, c], bias[c] = coef[row], intercept[row]
    return kernel.astype(np.float32), bias.astype(np.float32)


class dtype_policy:
    """Build layers under a Keras dtype policy (None: leave it), restoring the global one after."""

    def __init__(self, policy: str | None):
        self.policy = policy

    def __enter__(self):
        import keras

        self.previous = keras.config.dtype_policy()
        if self.policy:
            keras.config.set_dtype_policy(self.policy)

    def __exit__(self, *exc):
        import keras

        keras.config.set_dtype_policy(self.previous)
