"""Registry of pretrained keras.applications backbones, weight resolution and the fingerprint.

A backbone here is a Keras model that takes **uint8** pixels (N, H, W, 3) and returns pooled
features (N, D). Its own normalisation lives inside the model (stock Keras layers), so any backend
and device gets the same bytes and callers cannot get preprocessing wrong.

``"imagenet"`` weights are looked up in Keras' own cache (``$KERAS_HOME/models``, under the file
name keras.applications uses) and, for the vendored ``mobilenet_0.25``, in featx's package data;
a file missing from both is downloaded the way keras.applications does, from the same address (or
the mirror ``FEATX_WEIGHTS_MIRROR`` / ``weights_mirror=``), verified and saved into that cache
(featx.download). Offline mode (``FEATX_OFFLINE=1`` / ``offline=True``) never touches the network.
A file path is loaded as given; ``"none"`` builds random weights and says so everywhere.

``views`` (the image and its mirror, and crops, averaged) and ``layers`` (several pooled blocks from one
pass, side by side) are built into the same model (featx.featuresets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from featx.config import DEFAULT_BACKBONE  # noqa: F401  (its home is featx.config)
from featx.runtime import load_backend

log = logging.getLogger("featx")

#: Bump when anything that changes feature values for the same image and weights changes
#: (decode, colour handling, resize, normalisation); it is part of every fingerprint.
# 2: JPEGs decode at M/8 DCT scales (simplejpeg), not only halves.
# 3: EfficientNet (v1) inference models normalise with the loaded statistics (and ImageNet's std fix).
PREPROCESSING_VERSION = 3
#: How pixels reach the model size (recorded in the fingerprint).
RESIZE_METHOD = "jpeg-dct-eighths+pillow-bilinear-squash"
POOLINGS = ("avg", "max")
VENDORED_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BackboneSpec:
    """What featx knows about one keras.applications constructor."""

    name: str  # registry name, e.g. "mobilenet_0.25"
    constructor: str  # attribute of keras.applications, e.g. "MobileNet"
    input_size: int  # default square input size in pixels
    feature_dim: int  # width of the pooled last conv block
    preprocessing: str  # "tf" ([-1, 1]), "torch" (ImageNet mean/std), "caffe" (BGR, mean), "none" (in-model)
    weights_file: str  # the file name keras.applications caches in $KERAS_HOME/models
    min_size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)
    vendored: str | None = None  # file name under featx/weights, if shipped with featx
    vendored_sha256: str | None = None
    weights_url: str = ""  # where keras.applications downloads weights_file from
    weights_hash: str | None = None  # the md5 (32 hex) or sha256 (64 hex) Keras publishes for it, if any
    download_mb: float | None = None  # about how large the download is (MB)


#: Where keras.applications' weight files live (its modules' BASE_WEIGHTS_PATH / WEIGHTS_PATH_NO_TOP).
KERAS_WEIGHTS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _keras_url(folder: str, fname: str) -> str:
    return f"{KERAS_WEIGHTS_BASE}{folder}/{fname}"


def _mobilenet(alpha: float, text: str, mb: float, vendored: bool = False) -> BackboneSpec:
    fname = f"mobilenet_{text}_224_tf_no_top.h5"  # Keras publishes no hash for MobileNet files
    return BackboneSpec(
        name="mobilenet" if alpha == 1.0 else f"mobilenet_{alpha:g}",
        constructor="MobileNet",
        input_size=224,
        feature_dim=int(1024 * alpha),
        preprocessing="tf",
        weights_file=fname,
        kwargs={"alpha": alpha},
        vendored=fname if vendored else None,
        vendored_sha256=(
            "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf" if vendored else None
        ),
        weights_url=_keras_url("mobilenet", fname),
        download_mb=mb,
    )


def _efficientnet(b: int, size: int, dim: int, md5: str, mb: float) -> BackboneSpec:
    fname = f"efficientnetb{b}_notop.h5"
    return BackboneSpec(
        f"efficientnetb{b}", f"EfficientNetB{b}", size, dim, "none", fname,
        weights_url=f"https://storage.googleapis.com/keras-applications/{fname}", weights_hash=md5,
        download_mb=mb,
    )


# Addresses and hashes are keras.applications' own (Keras 3; tests/test_weights_download.py checks
# them against the installed Keras); sizes are approximate and only for `featx backbones`.
_SPECS = [
    BackboneSpec("vgg16", "VGG16", 224, 512, "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 weights_url=_keras_url("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 weights_hash="6d6bbae143d832006294945121d1f1fc", download_mb=58.9),
    BackboneSpec("resnet50", "ResNet50", 224, 2048, "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 weights_url=_keras_url("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 weights_hash="4d473c1dd8becc155b73f8504c6f6626", download_mb=94.8),
    BackboneSpec("resnet50v2", "ResNet50V2", 224, 2048, "tf", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 weights_url=_keras_url("resnet", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 weights_hash="fac2f116257151a9d068a22e544a4917", download_mb=94.7),
    _mobilenet(1.0, "1_0", 17.2),
    _mobilenet(0.75, "7_5", 10.6),
    _mobilenet(0.5, "5_0", 5.6),
    _mobilenet(0.25, "2_5", 2.1, vendored=True),
    BackboneSpec("mobilenetv2", "MobileNetV2", 224, 1280, "tf",
                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                 weights_url=_keras_url("mobilenet_v2",
                                        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
                 download_mb=9.4),  # no published hash
    BackboneSpec("mobilenetv3small", "MobileNetV3Small", 224, 576, "none",
                 "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                 weights_url=_keras_url("mobilenet_v3", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
                 weights_hash="d3e8ec802a04aa4fc771ee12a9a9b836", download_mb=4.3),
    BackboneSpec("mobilenetv3large", "MobileNetV3Large", 224, 960, "none",
                 "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                 weights_url=_keras_url("mobilenet_v3", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
                 weights_hash="07fb09a5933dd0c8eaafa16978110389", download_mb=12.7),
    _efficientnet(0, 224, 1280, "50bc09e76180e00e4465e1a485ddc09d", 16.7),
    _efficientnet(1, 240, 1280, "74c4e6b3e1f6a1eea24c589628592432", 27.0),
    _efficientnet(2, 260, 1408, "111f8e2ac8aa800a7a99e3239f7bfb39", 31.8),
    _efficientnet(3, 300, 1536, "af6d107764bb5b1abb91932881670226", 43.9),
    BackboneSpec("efficientnetv2b0", "EfficientNetV2B0", 224, 1280, "none", "efficientnetv2-b0_notop.h5",
                 weights_url=_keras_url("efficientnet_v2", "efficientnetv2-b0_notop.h5"),
                 weights_hash="893217f2bb855e2983157299931e43ff", download_mb=24.3),
    BackboneSpec("densenet121", "DenseNet121", 224, 1024, "torch",
                 "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 weights_url=_keras_url("densenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 weights_hash="30ee3e1110167f948a6b9946edeeb738", download_mb=29.1),
    BackboneSpec("inceptionv3", "InceptionV3", 299, 2048, "tf",
                 "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", min_size=75,
                 weights_url=_keras_url("inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 weights_hash="bcbd6486424b2319ff4ef7d526e38f63", download_mb=87.9),
    BackboneSpec("xception", "Xception", 299, 2048, "tf",
                 "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", min_size=71,
                 weights_url=_keras_url("xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 weights_hash="b0042744bf5b25fce3cb969f33bebb97", download_mb=83.7),
    BackboneSpec("convnexttiny", "ConvNeXtTiny", 224, 768, "none", "convnext_tiny_notop.h5",
                 weights_url=_keras_url("convnext", "convnext_tiny_notop.h5"),
                 weights_hash="d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
                 download_mb=111.7),
]
REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in _SPECS}
VENDORED_BACKBONE = "mobilenet_0.25"


class UnknownBackbone(ValueError):
    pass


class WeightsUnavailable(FileNotFoundError):
    """Pretrained weights cannot be had (offline mode, a failed or refused download, a missing file);
    the message says which file, from where, and how to provide it."""


def get_spec(name: str) -> BackboneSpec:
    key = name.strip().lower().replace("-", "").replace(" ", "")
    aliases = {"mobilenet_1.0": "mobilenet", "mobilenet_1": "mobilenet", "mobilenet0.25": "mobilenet_0.25"}
    key = aliases.get(key, key)
    if key not in REGISTRY:
        raise UnknownBackbone(
            f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)} (see `featx backbones`)"
        )
    return REGISTRY[key]


def keras_cache_dir() -> Path:
    """Where keras.applications caches downloaded weights: $KERAS_HOME/models (default ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "imagenet", "file" or "none"
    path: Path | None  # the file that will be loaded (None for random weights)
    origin: str  # human description: "Keras cache", "vendored with featx", "downloaded from URL", "user file", "random"
    url: str | None = None  # the address the file was downloaded from in this process (None: not downloaded)

    def to_dict(self) -> dict:
        """Where the weights came from, for summaries (not part of the fingerprint: the same bytes
        from Keras' address, a mirror or a hand copy are the same weights, told by weights_sha256)."""
        return {"kind": self.kind, "origin": self.origin, "path": None if self.path is None else str(self.path),
                "url": self.url}


def find_imagenet_weights(spec: BackboneSpec) -> Path | None:
    """The ImageNet weights file for `spec` if it is available without a download, else None."""
    cached = keras_cache_dir() / spec.weights_file
    if cached.is_file():
        return cached
    if spec.vendored:
        vendored = VENDORED_DIR / spec.vendored
        if vendored.is_file():
            return vendored
    return None


def weights_download_url(spec: BackboneSpec, mirror: str | None = None) -> str:
    """Where `spec`'s ImageNet file would be downloaded from: the mirror (argument, else
    FEATX_WEIGHTS_MIRROR) serving Keras' file name, else keras.applications' own address."""
    from featx.download import mirror_url, weights_mirror

    base = weights_mirror(mirror)
    return mirror_url(base, spec.weights_file) if base else spec.weights_url


def _no_download_message(spec: BackboneSpec, why: str) -> str:
    cache = keras_cache_dir()
    return (
        f"ImageNet weights for backbone {spec.name!r} are not available {why}: the file "
        f"{spec.weights_file!r} is not in {cache}. Provide it in one of three ways: (1) copy "
        f"{spec.weights_file} (from {spec.weights_url}) into {cache} (set KERAS_HOME to use another Keras "
        f"cache); (2) set FEATX_WEIGHTS_MIRROR to a base address serving {spec.weights_file} (and leave "
        f"offline mode); (3) pass the file's path with --weights PATH (weights=PATH). "
        f"--backbone {VENDORED_BACKBONE} needs no download at all (its weights come with featx). "
        f"featx never falls back to random weights; use --weights none to ask for them explicitly."
    )


def _loads_into(spec: BackboneSpec):
    """A check for a downloaded file Keras publishes no hash for: it must load into the backbone."""

    def check(path: Path) -> None:
        load_backend()  # first import of the backend, without its native start-up chatter
        import keras

        size = max(spec.min_size, 64)
        net = getattr(keras.applications, spec.constructor)(
            include_top=False, weights=None, input_shape=(size, size, 3), **spec.kwargs)
        net.load_weights(str(path))

    return check


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None, *,
                    weights_mirror: str | None = None, offline: bool | None = None,
                    progress: bool = True) -> WeightsSource:
    """Turn the user's `weights` argument into a concrete local source, or explain what is missing.

    ``"imagenet"``: the Keras cache, else the vendored file, else a download into the Keras cache
    (from `weights_mirror` / FEATX_WEIGHTS_MIRROR, else Keras' address), verified before it is
    kept. `offline` (default: FEATX_OFFLINE) forbids the download: a missing file is then an error.
    """
    from featx.download import DownloadError, check_cached, fetch, offline_mode

    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random")):
        return WeightsSource("none", None, "random")
    if isinstance(weights, str) and weights.lower() == "imagenet":
        path = find_imagenet_weights(spec)
        if path is not None and path.parent == VENDORED_DIR:
            return WeightsSource("imagenet", path, "vendored with featx")
        if path is not None:
            try:
                _check_cached_once(str(path), spec.weights_hash, spec.weights_url, check_cached)
            except DownloadError as exc:
                raise WeightsUnavailable(str(exc)) from None
            return WeightsSource("imagenet", path, "Keras cache")
        if offline_mode(offline):
            raise WeightsUnavailable(_no_download_message(spec, "offline (FEATX_OFFLINE / --offline is on)"))
        url = weights_download_url(spec, weights_mirror)
        dest = keras_cache_dir() / spec.weights_file
        log.info("downloading ImageNet weights for %s (about %s MB) from %s into %s", spec.name,
                 spec.download_mb or "?", url, dest.parent)
        where = ("Check the mirror (FEATX_WEIGHTS_MIRROR)" if url != spec.weights_url else
                 f"Check the network or proxy (HTTPS_PROXY), set FEATX_WEIGHTS_MIRROR to a mirror serving "
                 f"{spec.weights_file}")
        hint = (f"{where}, or copy the file into {dest.parent}, or use --backbone {VENDORED_BACKBONE} "
                "(vendored: no download)")
        try:
            fetch(url, dest, expected_hash=spec.weights_hash,
                  check=None if spec.weights_hash else _loads_into(spec), progress=progress, hint=hint)
        except DownloadError as exc:
            raise WeightsUnavailable(str(exc)) from None
        return WeightsSource("imagenet", dest, f"downloaded from {url}", url=url)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"weights file {str(path)!r} does not exist (weights may be 'imagenet', 'none' or a path "
            "to a Keras weights file such as *_notop.h5 or *.weights.h5)"
        )
    return WeightsSource("file", path.resolve(), "user file")


_CHECKED: set[tuple] = set()


def _check_cached_once(path: str, expected: str | None, url: str, check_cached) -> None:
    """Hash a cached file against Keras' published hash once per process and file version."""
    if expected is None:
        return
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, expected)
    if key not in _CHECKED:
        check_cached(Path(path), expected, url)
        _CHECKED.add(key)


@lru_cache(maxsize=64)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: os.PathLike | str) -> str:
    st = os.stat(path)
    return _sha256_file_cached(str(path), st.st_size, st.st_mtime_ns)


def normalize_size(spec: BackboneSpec, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if image_size is None:
        return (spec.input_size, spec.input_size)
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(v) for v in image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(size) < spec.min_size:
        raise ValueError(f"{spec.name} needs images of at least {spec.min_size} px, got {size}")
    return size  # type: ignore[return-value]


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
        fingerprint = {
            "backbone": spec.name,
            "weights": source.kind,
            "weights_sha256": weights_sha,
            "image_size": list(size),
            "pooling": pooling if parsed or len(base.output.shape) == 4 else None,
            "layer": layer,
            "feature_dim": int(x.shape[-1]),
            "preprocessing": spec.preprocessing,
            "resize": RESIZE_METHOD,
            "preprocessing_version": PREPROCESSING_VERSION,
        }
        if stddev_fix:  # only where it applies, so other backbones' stores stay valid
            fingerprint["normalization_fix"] = "imagenet-stddev"
        if precision != "float32":  # likewise: float32 stores (all existing ones) keep their fingerprint
            fingerprint["precision"] = precision
        if views != "one":  # likewise
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


def describe_backbones(*, weights_mirror: str | None = None, offline: bool | None = None) -> list[dict]:
    """One row per registry entry, for `featx backbones` (touches no network).

    ``weights``: "vendored" (ships with featx), "cached" (in the Keras cache), "download" (fetched
    on first use from ``weights_url``, about ``download_mb`` MB) or "missing" (offline mode on).
    """
    from featx.download import offline_mode

    off = offline_mode(offline)
    rows = []
    for spec in REGISTRY.values():
        path = find_imagenet_weights(spec)
        if path is not None:
            status = "vendored" if path.parent == VENDORED_DIR else "cached"
        else:
            status = "missing" if off else "download"
        rows.append(
            {
                "name": spec.name,
                "keras_application": spec.constructor + (
                    f"(alpha={spec.kwargs['alpha']})" if "alpha" in spec.kwargs else ""
                ),
                "input_size": spec.input_size,
                "feature_dim": spec.feature_dim,
                "preprocessing": spec.preprocessing,
                "weights_file": spec.weights_file,
                "weights": status,
                "imagenet_offline": path is not None,
                "weights_path": str(path) if path else None,
                "weights_url": None if status == "vendored" else weights_download_url(spec, weights_mirror),
                "weights_hash": spec.weights_hash,
                "download_mb": spec.download_mb,
                "default": spec.name == DEFAULT_BACKBONE,
            }
        )
    return rows


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
