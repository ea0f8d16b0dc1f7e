"""The backbone registry: what featx knows about each keras.applications constructor it offers
(input size, feature width, preprocessing, the weights file Keras caches and where Keras publishes it,
with its hash), name lookup, image-size rules, and the table `featx backbones` prints.

No Keras here: the registry is read by commands that never build a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featx.config import DEFAULT_BACKBONE

POOLINGS = ("avg", "max")
#: featx's package data: the vendored MobileNet-0.25 weights (see featx/weights/README.md)
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


def get_spec(name: str) -> BackboneSpec:
    key = name.strip().lower().replace("-", "").replace(" ", "")
    aliases = {"mobilenet_1.0": "mobilenet", "mobilenet_1": "mobilenet", "mobilenet0.25": "mobilenet_0.25"}
    key = aliases.get(key, key)
    if key not in REGISTRY:
        raise UnknownBackbone(
            f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)} (see `featx backbones`)"
        )
    return REGISTRY[key]


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


def describe_backbones(*, weights_mirror: str | None = None, offline: bool | None = None) -> list[dict]:
    """One row per registry entry, for `featx backbones` (touches no network).

    ``weights``: "vendored" (ships with featx), "cached" (in the Keras cache), "download" (fetched
    on first use from ``weights_url``, about ``download_mb`` MB) or "missing" (offline mode on).
    """
    from featx.download import offline_mode
    from featx.weightfiles import find_imagenet_weights, weights_download_url

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
