"""Compute precision of the inference model: float32 (default), bfloat16 or float16.

The reduced precisions are Keras "mixed" dtype policies: variables (the folded weights) stay
float32, every layer computes in 16 bits, and the pooled features leave the model as float32 (the
pooling layer stays float32, so the average over the feature map is summed in float32). The uint8
pixels and the normalisation in front of the backbone are unchanged.

On a GPU with tensor cores this roughly doubles convolution throughput; features then differ
from float32's by 16-bit round-off (bfloat16 keeps float32's range with 8 significant bits,
float16 has 11 bits but a narrow range). That is why the precision is part of the store's
fingerprint whenever it is not float32: features of different precisions never mix in one store.
"""

from __future__ import annotations

PRECISIONS = ("float32", "bfloat16", "float16")
DEFAULT_PRECISION = "float32"


class PrecisionUnsupported(RuntimeError):
    """This backend/device cannot run the model in the requested precision (no silent fallback)."""


def check_precision(precision: str) -> str:
    """Validate a precision name (float32, bfloat16, float16); returns it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def dtype_policy_name(precision: str) -> str:
    """The Keras dtype policy for `precision`: 'float32' or 'mixed_bfloat16' / 'mixed_float16'."""
    check_precision(precision)
    return precision if precision == "float32" else f"mixed_{precision}"


def with_compute_dtype(model, precision: str):
    """A copy of the functional `model` whose every layer computes in `precision` (weights copied,
    variables float32); `model` itself for float32. Nested functional models are converted too."""
    import keras

    from keras.src.models.functional import Functional

    from featx.fold import set_weights_and_state

    policy = dtype_policy_name(precision)
    if policy == "float32":
        return model
    nested = {layer.name: with_compute_dtype(layer, precision) for layer in model.layers
              if isinstance(layer, Functional)}

    def clone_layer(layer):
        if layer.name in nested:
            return nested[layer.name]
        config = layer.get_config()
        config["dtype"] = policy  # the layer's own (serialised float32) policy would win otherwise
        return type(layer).from_config(config)

    converted = keras.models.clone_model(model, clone_function=clone_layer)
    new_layers = {layer.name: layer for layer in converted.layers}
    for layer in model.layers:
        new = new_layers.get(layer.name)
        if layer.name in nested or new is None or new is layer or not layer.weights:
            continue
        set_weights_and_state(new, layer.get_weights())
    converted.trainable = False
    return converted


def run_check(model, image_size: tuple[int, int], precision: str) -> None:
    """Run `model` once on a small batch; a backend that has no 16-bit kernel for one of its ops
    on this device raises PrecisionUnsupported naming the precision, instead of a backend trace."""
    import numpy as np

    if precision == "float32":
        return
    try:
        model.predict_on_batch(np.zeros((1, *image_size, 3), np.uint8))
    except Exception as exc:  # the backends raise their own types (NotFoundError, XlaRuntimeError, ...)
        import keras

        raise PrecisionUnsupported(
            f"the model cannot run in {precision} on this device with the {keras.backend.backend()} backend "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); use --precision "
            "float32, or bfloat16/float16 where the device supports it (GPUs do)") from exc
