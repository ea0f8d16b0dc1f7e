"""A built backbone: the frozen keras.applications model that takes **uint8** pixels (N, H, W, 3) and
returns pooled features (N, D), its inference graph, its fingerprint, and one built model per
configuration and process (``shared_backbone``).

Its own normalisation lives inside the model (stock Keras layers), so any backend and device gets the
same bytes and callers cannot get preprocessing wrong. Which backbones exist is featx.registry; where
their weights come from (Keras cache, vendored, download, a file, random) is featx.weightfiles; both
are re-exported here, so ``from featx.backbones import …`` stays the one public entry point.

``views`` (the image and its mirror, and crops, averaged) and ``layers`` (several pooled blocks from one
pass, side by side) are built into the same model (featx.featuresets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from featx.config import DEFAULT_BACKBONE  # noqa: F401  (its home is featx.config)
from featx.registry import (  # noqa: F401  (re-exported: featx.backbones is the public entry point)
    POOLINGS, REGISTRY, VENDORED_BACKBONE, VENDORED_DIR, BackboneSpec, UnknownBackbone, describe_backbones, get_spec,
    normalize_size,
)
from featx.runtime import load_backend
from featx.weightfiles import (  # noqa: F401  (re-exported)
    WeightsSource, WeightsUnavailable, find_imagenet_weights, keras_cache_dir, planned_weights, resolve_weights,
    sha256_file, weights_download_url,
)

if TYPE_CHECKING:
    from featx.config import BackboneConfig

log = logging.getLogger("featx")

#: Bump when anything that changes feature values for the same image and weights changes
#: (decode, colour handling, resize, normalisation); it is part of every fingerprint.
# 2: JPEGs decode at M/8 DCT scales (simplejpeg), not only halves.
# 3: EfficientNet (v1) inference models normalise with the loaded statistics (and ImageNet's std fix).
PREPROCESSING_VERSION = 3
#: How pixels reach the model size (recorded in the fingerprint).
RESIZE_METHOD = "jpeg-dct-eighths+pillow-bilinear-squash"


def fingerprint_id(fingerprint: dict) -> str:
    """A short stable id of a fingerprint (for file names and messages)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def normalization_layers(mode: str, prefix: str = "featx") -> list:
    """Keras layers that turn float pixels in 0..255 into what a backbone's weights expect.

    Built from stock Keras layers only (no custom class), so a saved featx model loads with plain
    ``keras.saving.load_model`` in safe mode, without importing featx. Each runs on the device, so
    uint8 batches (4× smaller than float32) are what crosses to it.
    """
    import keras

    if mode == "tf":  # [-1, 1]
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=f"{prefix}_scale")]
    if mode == "torch":  # ImageNet mean / std on [0, 1]
        return [
            keras.layers.Rescaling(1 / 255.0, name=f"{prefix}_scale"),
            keras.layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2],
                                       name=f"{prefix}_normalize"),
        ]
    if mode == "caffe":  # RGB → BGR and subtract the BGR mean: one fixed 3×3 map plus bias
        swap = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
        return [keras.layers.Dense(
            3, kernel_initializer=keras.initializers.Constant(swap),
            bias_initializer=keras.initializers.Constant([-103.939, -116.779, -123.68]),
            trainable=False, name=f"{prefix}_bgr_mean",
        )]
    if mode == "none":  # the network normalises 0..255 input itself (EfficientNet, ConvNeXt, V3)
        return []
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def pixels_input(size: tuple[int, int]):
    """The uint8 image input of every featx model, and its cast to float (0..255) on the device."""
    import keras

    inputs = keras.Input(shape=(*size, 3), dtype="uint8", name="pixels")
    return inputs, keras.layers.Rescaling(1.0, name="featx_to_float")(inputs)


class Backbone:
    """A built, frozen feature extractor: uint8 batches in, float32 features out.

    >>> bb = Backbone.build("mobilenet_0.25", image_size=96)   # the vendored ImageNet weights
    >>> bb.predict(np.zeros((2, 96, 96, 3), np.uint8)).shape
    (2, 256)
    >>> bb.fingerprint["weights"], bb.fingerprint["image_size"]
    ('imagenet', [96, 96])
    """

    def __init__(self, spec: BackboneSpec, model, fingerprint: dict, weights: WeightsSource, *,
                 pooling: str = "avg"):
        self.spec = spec
        #: Compute precision of inference_model (featx.precision); recorded in the fingerprint unless float32.
        self.precision: str = fingerprint.get("precision", "float32")
        #: The stock network (BatchNormalization layers intact): what fine-tuning trains and saves.
        self.model = model
        self.fingerprint = fingerprint
        self.weights = weights
        self.pooling = pooling
        #: Views averaged per image ("one", "flip", "flip+crops") and pooling per output (featx.featuresets).
        self.views: str = fingerprint.get("views", "one")
        self._poolings = [s["pooling"] for s in fingerprint.get("feature_sets") or ()] or [pooling]
        self._inference_model = None
        self.n_folded = 0  # BatchNormalization layers folded away in inference_model

    @property
    def inference_model(self):
        """The same function as ``model``, made for frozen inference: BatchNormalization folded into
        the convolutions (featx.fold) and the pixels cast and scaled in one step. Built on first use.
        Features agree with ``model``'s to float32 round-off."""
        if self._inference_model is None:
            import keras

            from featx.fold import fold_batchnorm

            base = next(layer for layer in self.model.layers if isinstance(layer, keras.Model))
            from featx.precision import run_check, with_compute_dtype

            folded, self.n_folded = fold_batchnorm(base)
            # Only the backbone computes in 16 bits; the input cast and the pooling stay float32.
            model = _assemble(self.spec, self.image_size, with_compute_dtype(folded, self.precision),
                              self._poolings, fused_input=True, views=self.views)
            run_check(model, self.image_size, self.precision)  # a clear error, not a backend trace
            self._inference_model = model
        return self._inference_model

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.fingerprint["image_size"])  # type: ignore[return-value]

    @property
    def feature_dim(self) -> int:
        return int(self.fingerprint["feature_dim"])

    @property
    def random_weights(self) -> bool:
        return self.weights.kind == "none"

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Features for a uint8 batch (N, H, W, 3) → float32 (N, D)."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:3] != self.image_size:
            raise ValueError(
                f"expected uint8 pixels of shape (N, {self.image_size[0]}, {self.image_size[1]}, 3), "
                f"got {pixels.dtype} {pixels.shape}"
            )
        out = self.inference_model.predict_on_batch(pixels)
        return np.asarray(out, dtype=np.float32)

    @classmethod
    def build(
        cls,
        name: str = DEFAULT_BACKBONE,
        *,
        weights: str | os.PathLike | None = "imagenet",
        image_size: int | tuple[int, int] | None = None,
        pooling: str = "avg",
        layer: str | None = None,
        seed: int = 0,
        weights_mirror: str | None = None,
        offline: bool | None = None,
        precision: str = "float32",
        views: str = "one",
        layers: str | tuple[str, ...] | None = None,
    ) -> "Backbone":
        """Build the backbone; raises WeightsUnavailable rather than falling back to random weights.

        ImageNet weights missing from the Keras cache are downloaded into it first (from
        `weights_mirror`, default FEATX_WEIGHTS_MIRROR, else Keras' address) unless `offline`
        (default FEATX_OFFLINE); ``self.weights`` says where they came from.
        `precision` (float32, bfloat16, float16) is what inference_model computes in (featx.precision).
        `views` ("one", "flip", "flip+crops") are averaged per image inside the model; `layers`
        ("LAYER[:POOLING]", ...) are pooled side by side from one pass (see featx.featuresets).
        """
        from featx.featuresets import check_views, parse_layers
        from featx.precision import check_precision

        check_precision(precision)
        spec = get_spec(name)
        size = normalize_size(spec, image_size)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        check_views(views)
        parsed = parse_layers(layers, pooling)
        if parsed is not None and layer is not None:
            raise ValueError("give layer= (one inner layer) or layers= (several feature sets), not both")
        source = resolve_weights(spec, weights, weights_mirror=weights_mirror, offline=offline)

        load_backend()  # first import of the backend, without its native start-up chatter
        import keras

        if source.kind == "none":
            # Random weights are only ever built on request, and seeded so they are reproducible.
            keras.utils.set_random_seed(seed)
        constructor = getattr(keras.applications, spec.constructor)
        base = constructor(include_top=False, weights=None, input_shape=(*size, 3), **spec.kwargs)
        if source.path is not None:
            if spec.vendored and source.path.parent == VENDORED_DIR:
                digest = sha256_file(source.path)
                if digest != spec.vendored_sha256:
                    raise WeightsUnavailable(
                        f"vendored weights {source.path} are damaged (sha256 {digest}); reinstall featx"
                    )
            try:
                base.load_weights(str(source.path))
            except Exception as exc:  # Keras raises several types for a mismatched file
                raise ValueError(
                    f"weights file {source.path} does not fit backbone {spec.name!r} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        stddev_fix = source.kind != "none" and _needs_imagenet_stddev_fix(spec, base)
        if stddev_fix:
            base = _with_imagenet_stddev_fix(base)
        base.trainable = False

        base = _with_outputs(spec, base, layer, parsed)
        model = _assemble(spec, size, base, [p for _, p in parsed] if parsed else [pooling], views=views)
        x = model.output

        if source.kind == "none":
            weights_sha = "random:seed=%d:" % seed + hashlib.sha256(
                b"".join(np.asarray(w).tobytes() for w in base.get_weights())
            ).hexdigest()
        else:
            weights_sha = sha256_file(source.path)
        pooled = pooling if parsed or len(base.output.shape) == 4 else None
        fingerprint = _fingerprint(spec, source.kind, weights_sha, size, pooled, layer, int(x.shape[-1]), stddev_fix,
                                   precision)
        if views != "one":  # only when used, like precision: existing stores keep their fingerprint
            fingerprint["views"] = views
        if parsed is not None:  # likewise
            from featx.featuresets import fingerprint_sets

            fingerprint["feature_sets"] = fingerprint_sets(parsed, [int(o.shape[-1]) for o in base.outputs])
        return cls(spec, model, fingerprint, source, pooling=pooling)


def _with_outputs(spec: BackboneSpec, base, layer: str | None, parsed: list[tuple[str, str]] | None):
    """``base`` ending at `layer`, or with one output per feature set in `parsed` (``final``: its own
    output), or ``base`` itself."""
    import keras

    if layer is not None:
        return keras.Model(base.inputs, _layer_output(spec, base, layer), name=f"{base.name}_{layer}")
    if parsed is not None:
        outputs = [base.output if name == "final" else _layer_output(spec, base, name) for name, _ in parsed]
        return keras.Model(base.inputs, outputs, name=f"{base.name}_sets")
    return base


def _layer_output(spec: BackboneSpec, base, layer: str):
    try:
        return base.get_layer(layer).output
    except ValueError:
        raise ValueError(
            f"backbone {spec.name!r} has no layer {layer!r}; "
            f"some of its layers: {', '.join(l.name for l in base.layers[-8:])}"
        ) from None


def _fingerprint(spec: BackboneSpec, weights_kind: str, weights_sha: str, size: tuple[int, int], pooling: str | None,
                 layer: str | None, feature_dim: int, stddev_fix: bool, precision: str) -> dict:
    """The fingerprint dict, in one place for Backbone.build and planned_fingerprint (so they cannot drift)."""
    fingerprint = {
        "backbone": spec.name,
        "weights": weights_kind,
        "weights_sha256": weights_sha,
        "image_size": list(size),
        "pooling": pooling,
        "layer": layer,
        "feature_dim": feature_dim,
        "preprocessing": spec.preprocessing,
        "resize": RESIZE_METHOD,
        "preprocessing_version": PREPROCESSING_VERSION,
    }
    if stddev_fix:  # only where it applies, so other backbones' stores stay valid
        fingerprint["normalization_fix"] = "imagenet-stddev"
    if precision != "float32":  # likewise: float32 stores (all existing ones) keep their fingerprint
        fingerprint["precision"] = precision
    return fingerprint


def planned_fingerprint(cfg: "BackboneConfig") -> dict | None:
    """Exactly the fingerprint ``cfg.build()`` would give, computed without Keras or a model (hashing
    the weights file only), or None when it cannot be known so: random weights, a named `layer` (its
    width and shape come from the model), weights that need a download, or an EfficientNet given as a
    file (whether it needs the ImageNet std fix is read from its loaded values), or several `layers`
    (their widths come from the model)."""
    if cfg.layer is not None or cfg.layers is not None:
        return None
    spec = get_spec(cfg.name)
    size = normalize_size(spec, cfg.image_size)
    source = planned_weights(cfg)
    if source is None:
        return None
    # Keras' ImageNet release of EfficientNet B0-B7 (hash-checked when cached) always needs the fix
    stddev_fix = spec.constructor.startswith("EfficientNetB")
    if stddev_fix and source.kind != "imagenet":
        return None
    fingerprint = _fingerprint(spec, source.kind, sha256_file(source.path), size, cfg.pooling, None,
                               spec.feature_dim, stddev_fix, cfg.precision)
    if cfg.views != "one":  # as Backbone.build records it
        fingerprint["views"] = cfg.views
    return fingerprint


#: The ImageNet standard deviations (RGB) that keras.applications' EfficientNet (B0-B7) weight
#: release stores as its Normalization layer's *variance* (tensorflow/tensorflow#49930).
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _needs_imagenet_stddev_fix(spec: BackboneSpec, base) -> bool:
    """True for an EfficientNet (v1) whose loaded Normalization holds the release's std-as-variance.

    That layer then divides by sqrt(std) only. keras.applications corrects it with a
    Rescaling(1 / sqrt(std)) after the layer, but only when built with ``weights="imagenet"``;
    featx builds with ``weights=None`` and loads the file itself, so it must add the same layer or
    its features would not be the network's (inputs scaled about 2x too small). Decided from the
    loaded values, so the same file given as a path gets the same network as ``"imagenet"``.
    """
    import keras

    if not spec.constructor.startswith("EfficientNetB"):
        return False
    norms = [layer for layer in base.layers if type(layer) is keras.layers.Normalization]
    if len(norms) != 1:
        return False
    variance = np.asarray(keras.ops.convert_to_numpy(norms[0].variance), np.float64).reshape(-1)
    return variance.shape == (3,) and bool(np.allclose(variance, IMAGENET_STDDEV_RGB, rtol=1e-6, atol=0.0))


def _with_imagenet_stddev_fix(base):
    """A copy of ``base`` with keras.applications' Rescaling(1 / sqrt(std)) after its
    Normalization layer, weights copied (see _needs_imagenet_stddev_fix)."""
    import math

    import keras

    from featx.fold import set_weights_and_state

    rescale = keras.layers.Rescaling([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB],
                                     name="imagenet_stddev_rescaling")

    def call_layer(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return rescale(out) if type(layer) is keras.layers.Normalization else out

    fixed = keras.models.clone_model(base, call_function=call_layer)
    new_layers = {layer.name: layer for layer in fixed.layers}
    for layer in base.layers:
        if layer.weights:
            set_weights_and_state(new_layers[layer.name], layer.get_weights())
    return fixed


def _assemble(spec: BackboneSpec, size: tuple[int, int], base, poolings: list[str], *, fused_input: bool = False,
              views: str = "one"):
    """uint8 pixels -> the backbone's normalisation -> views -> ``base`` -> pooled features (one
    pooling per output of ``base``, side by side) -> averaged over the views, as one model.

    ``fused_input``: let the first normalisation layer cast the uint8 pixels itself (Rescaling
    does) instead of a separate cast pass; the inference model does, the saved/trained one keeps
    the layer layout fine-tuned files already have. The views are made after the normalisation,
    which is per pixel and affine, so flipping and resizing commute with it.
    """
    import keras

    from featx.featuresets import average_views, make_views

    norms = normalization_layers(spec.preprocessing)
    if fused_input and norms and isinstance(norms[0], keras.layers.Rescaling):
        inputs = x = keras.Input(shape=(*size, 3), dtype="uint8", name="pixels")
    else:
        inputs, x = pixels_input(size)
    for norm in norms:
        x = norm(x)
    outputs = base(make_views(x, views, size), training=False)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    pooled = [_pool(out, pooling, "" if len(outputs) == 1 else f"_{i}")
              for i, (out, pooling) in enumerate(zip(outputs, poolings))]
    x = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="featx_feature_sets")(pooled)
    x = average_views(x, views)
    model = keras.Model(inputs, x, name=f"featx_{spec.name.replace('.', '_')}")
    model.trainable = False
    return model


def _pool(x, pooling: str, suffix: str):
    import keras

    if len(x.shape) == 4:
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        return pool(name=f"featx_{pooling}_pool{suffix}")(x)
    if len(x.shape) != 2:
        return keras.layers.Flatten(name=f"featx_flatten{suffix}")(x)
    return x


# -- one built model per configuration and process ----------------------------------------------------------------
_SHARED: dict[tuple, Backbone] = {}
_SHARED_LOCK = threading.Lock()


def shared_backbone(name: str, *, weights: str | os.PathLike | None = "imagenet",
                    image_size: Any = None, pooling: str = "avg", layer: str | None = None,
                    precision: str = "float32", weights_mirror: str | None = None,
                    offline: bool | None = None, views: str = "one",
                    layers: str | tuple[str, ...] | None = None) -> Backbone:
    """The backbone of this configuration, built once per process and reused by every later caller
    (``FeatureExtractor`` instances, the tasks of a Dask worker). Building holds a lock, so several
    threads asking at once build it once.

    The key is what determines the model: the canonical backbone name, the weights, the image size
    (by its text, so a list from a task's JSON config is usable; ``224`` and ``(224, 224)`` are built
    separately, never wrongly shared), pooling, layer, precision, views and layers (canonical names).
    ``weights_mirror`` and ``offline`` are not in it: they say only how a missing weights file is
    fetched, and the file is verified the same way (Keras' published hash, or loading it) whichever way
    it came, so the built model is the same; the first caller's settings are used for that fetch."""
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    from featx.featuresets import canonical_layers

    layers = canonical_layers(layers, pooling)
    key = (get_spec(name).name, weights, None if image_size is None else str(image_size), pooling, layer, precision,
           views, layers)
    with _SHARED_LOCK:
        bb = _SHARED.get(key)
        if bb is None:
            bb = _SHARED[key] = Backbone.build(name, weights=weights, image_size=image_size, pooling=pooling,
                                               layer=layer, weights_mirror=weights_mirror, offline=offline,
                                               precision=precision, views=views, layers=layers)
    return bb
