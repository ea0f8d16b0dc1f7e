"""The Keras ways people extract features today: (d) and (e) of benchmarks/extract.py.

    python benchmarks/keras_ways.py SPEC.json    # the fresh-process run extract.py starts

This module never imports featx, so run as a script it measures (d) and (e) exactly as a Keras user
gets them: a fresh Python process with TensorFlow's own defaults (featx turns oneDNN on at import;
TensorFlow itself does so only on AVX-512-class CPUs). SPEC.json names the keras.applications
constructor, its kwargs, the image size, a weights file, the class-folder tree, the batch size and
which of "d", "e" to run; the images/s come back as one JSON line on stdout, with the stock
network's model-only rate ("stock_model").
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def stock_keras(constructor: str, kwargs: dict, image_size, batch_size: int, weights=None):
    """What Keras users write: the stock keras.applications network (pooling="avg") with its
    module's own ``preprocess_input`` on float pixels. ``weights`` is a list of arrays or a
    ``.weights.h5`` file. Traced on one batch before any timing."""
    import keras

    build = getattr(keras.applications, constructor)
    model = build(include_top=False, weights=None, pooling="avg", input_shape=(*image_size, 3), **kwargs)
    if isinstance(weights, (str, os.PathLike)):
        model.load_weights(weights)
    elif weights is not None:
        model.set_weights(weights)
    model.predict(np.zeros((batch_size, *image_size, 3), np.float32), batch_size=batch_size, verbose=0)
    return model, importlib.import_module(build.__module__).preprocess_input


class _LastBatchClock:
    """Stops the clock at the end of predict's last batch. Keras' predict on a tf.data pipeline can
    stall up to ~4 s after it while tf.data winds down its threads (seen here on TensorFlow 2.21:
    run times bunched at multiples of ~5.1 s). Users pay that once per call; on a benchmark of a
    few hundred images it would swamp the rate, so it is left out: generous to (d) and (e)."""

    def __init__(self):
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_predict_batch_end(self, batch, logs=None):
                clock.last = time.perf_counter()

        self.callback = Callback()
        self.start = self.last = time.perf_counter()

    def rate(self, n: int) -> float:
        return n / (self.last - self.start)


def bench_dataset_from_directory(tree, image_size, batch_size, stock) -> float:
    """(d) keras.utils.image_dataset_from_directory + preprocess_input + predict."""
    import keras
    import tensorflow as tf

    model, preprocess_input = stock
    ds = keras.utils.image_dataset_from_directory(tree, labels=None, image_size=tuple(image_size),
                                                  batch_size=batch_size, shuffle=False, verbose=False)
    ds = ds.map(preprocess_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    clock = _LastBatchClock()
    n = len(model.predict(ds, verbose=0, callbacks=[clock.callback]))
    return clock.rate(n)


def bench_image_data_generator(tree, image_size, batch_size, stock) -> float:
    """(e) the legacy ImageDataGenerator(preprocessing_function=...).flow_from_directory + predict."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    model, preprocess_input = stock
    gen = ImageDataGenerator(preprocessing_function=preprocess_input).flow_from_directory(
        tree, target_size=tuple(image_size), batch_size=batch_size, class_mode=None, shuffle=False)
    clock = _LastBatchClock()
    n = len(model.predict(gen, verbose=0, callbacks=[clock.callback]))
    return clock.rate(n)


def predict_on_batch_rate(model, x, seconds: float = 5.0) -> float:
    """Images/s of ``model.predict_on_batch(x)`` on a resident batch, after one untimed call
    (the model-only rates: featx's (b) and the stock network's)."""
    np.asarray(model.predict_on_batch(x))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.asarray(model.predict_on_batch(x))
        n += len(x)
    return n / (time.perf_counter() - start)


def bench_stock_model(image_size, batch_size, stock) -> float:
    """The stock network alone on a resident, preprocessed float batch: the model-only rate that
    (d) and (e) cannot exceed, to set beside featx's (b)."""
    model, preprocess_input = stock
    x = preprocess_input(np.random.default_rng(0).uniform(0, 255, (batch_size, *image_size, 3)).astype(np.float32))
    return predict_on_batch_rate(model, x)


def main(argv=None) -> int:
    (spec_path,) = argv if argv is not None else sys.argv[1:]
    with open(spec_path) as f:
        spec = json.load(f)
    if "featx" in sys.modules:
        raise RuntimeError("this run must not import featx: it measures TensorFlow's own defaults")
    stock = stock_keras(spec["constructor"], spec["kwargs"], spec["image_size"], spec["batch_size"],
                        spec["weights"])
    ways = {"d": bench_dataset_from_directory, "e": bench_image_data_generator}
    # The warm-up tree holds one full and one last-partial batch: Keras' predict traces once per
    # dataset shape, which would otherwise land in the timed pass.
    for tree in (spec["warmup_tree"], spec["tree"]):
        rates = {key: ways[key](tree, spec["image_size"], spec["batch_size"], stock) for key in spec["only"]}
    rates["stock_model"] = bench_stock_model(spec["image_size"], spec["batch_size"], stock)
    import tensorflow as tf

    rates["tf_enable_onednn_opts"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    rates["tensorflow"] = tf.__version__
    print(json.dumps(rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
