"""Parameter transfer: fine-tune a backbone's top blocks, starting from the linear probe (LP-FT).

The Keras way, in two phases: a head on the frozen base, then the top ``unfreeze`` blocks (all
layers of a block together) trained at a low learning rate with BatchNormalization kept in
inference mode. By default the head is not random: it is the logistic-regression probe fitted
on the frozen features (standardisation folded into the Dense weights), so fine-tuning starts
where feature transfer ended (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features").

Images go through featx's own reader (same decoding, colour handling and skips as extraction)
once, into a uint8 memory map; augmentation runs on the device as Keras layers inside the model,
where they are inactive at inference. Model selection (early stopping, best checkpoint) uses a
stratified part of the *train* split only; validation and test splits are never touched here.

The saved ``.keras`` file holds only stock Keras layers (it loads with ``keras.saving.load_model``
in safe mode, no featx needed) plus a ``featx.json`` entry: class names, the starting backbone's
fingerprint, the split rule, the training history and settings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from featx import linear, metrics, pipeline
from featx.backbones import DEFAULT_BACKBONE, Backbone, normalization_layers, pixels_input
from featx.decode import DEFAULT_MAX_PIXELS
from featx.fold import fold_batchnorm
from featx.oom import BackoffPredictor
from featx.runtime import load_backend, versions
from featx.sources import ImageSet, Item, SourceError, assign_splits, display_path, load_source

log = logging.getLogger("featx")

METADATA_ENTRY = "featx.json"  # extra entry in the .keras zip; Keras ignores entries it does not know
FORMAT_VERSION = 1
AUGMENTATIONS = ("flip", "rotate", "zoom", "shear", "translate", "contrast")
DEFAULT_AUGMENT = ("flip", "rotate", "zoom", "contrast")
MONITORS = ("val_loss", "val_accuracy")
# Layers that never train: BatchNormalization stays frozen (its statistics and affine terms come
# from ImageNet; the Keras fine-tuning guide keeps them so), the input normalisation is constant.
_NEVER_TRAINED = ("BatchNormalization", "Normalization", "Rescaling")


class FinetuneError(ValueError):
    """Fine-tuning cannot run as asked (data, arguments or model file)."""


# -- blocks ------------------------------------------------------------------------------------------
_BLOCK_PATTERNS = (
    re.compile(r"^(conv\d+_block\d+)_"),  # ResNet, DenseNet: conv5_block3_…
    re.compile(r"^(block_?\d+[a-z]?)_"),  # MobileNetV2 block_16_…, EfficientNet block7a_…, VGG, Xception
    re.compile(r"^conv_(?:dw|pw|pad)_(\d+)"),  # MobileNet v1: conv_dw_13 + conv_pw_13 are one block
    re.compile(r"^(expanded_conv(?:_\d+)?)_"),  # MobileNetV3
    re.compile(r"^(.*stage_\d+_block_\d+)_"),  # ConvNeXt
)
_SUFFIXES = re.compile(r"(_conv|_bn|_BN|_relu|_act|_activation)$")


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
def parse_augment(augment: str | Sequence[str] | None) -> tuple[str, ...]:
    """"flip,rotate" / ["flip", "rotate"] / "none" → a checked tuple of augmentation names."""
    if augment is None:
        return ()
    names = [a.strip().lower() for a in (augment.split(",") if isinstance(augment, str) else augment)]
    names = [n for n in names if n and n != "none"]
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise FinetuneError(f"unknown augmentation {unknown}; choose from {', '.join(AUGMENTATIONS)} or none")
    return tuple(dict.fromkeys(names))


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


def _inner_base(bb: Backbone):
    import keras

    for layer in bb.model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise FinetuneError(f"backbone {bb.spec.name} has no inner keras.applications model")


def build_model(bb: Backbone, n_classes: int, *, augment: Sequence[str] = DEFAULT_AUGMENT,
                dropout: float = 0.2, l2: float = 1e-4, seed: int = 0):
    """uint8 pixels → augmentation (training only) → backbone (BN in inference mode) → head (softmax)."""
    import keras

    base = _inner_base(bb)
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


# -- data -------------------------------------------------------------------------------------------------
@dataclass
class _Images:
    """Decoded training images: rows of `pixels` in `items` order."""

    items: list[Item]
    pixels: np.ndarray  # uint8 memory map (len(items) + batch padding, H, W, 3)
    sha256: list[str]
    features: np.ndarray | None  # frozen-backbone features when asked for
    skipped: list[dict]


def _decode_images(items: list[Item], bb: Backbone, scratch: Path, *, batch_size: int, workers: int | None,
                   with_features: bool, max_pixels: int) -> _Images:
    """Decode every item once with featx's reader into a memory map (and its frozen features, if asked)."""
    h, w = bb.image_size
    pixels = np.lib.format.open_memmap(scratch / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(items) + batch_size, h, w, 3))
    pos = 0
    predict = BackoffPredictor(bb.predict, batch_size)

    def step(batch: np.ndarray) -> np.ndarray:
        # the pipeline hands over full (padded) batches; rows past the real ones are overwritten next time
        pixels[pos:pos + len(batch)] = batch
        return predict(batch) if with_features else np.zeros((len(batch), 0), np.float32)

    kept: list[Item] = []
    hashes: list[str] = []
    features: list[np.ndarray] = []
    skipped: list[dict] = []
    for result in pipeline.run(items, step, image_size=bb.image_size, batch_size=batch_size, workers=workers,
                               max_pixels=max_pixels):
        kept += [it for it, _ in result.computed]
        hashes += [d.sha256 for _, d in result.computed]
        if result.computed:
            features.append(result.features)
        pos += len(result.computed)
        skipped += [{"path": it.relpath, "kind": d.skip.kind, "reason": d.skip.detail} for it, d in result.skipped]
    feats = np.concatenate(features) if with_features and features else None
    return _Images(kept, pixels, hashes, feats, skipped)


def _batches(pixels: np.ndarray, rows: np.ndarray, y: np.ndarray, weights: np.ndarray, *, batch_size: int,
             shuffle: bool, seed: int):
    """A keras.utils.PyDataset over rows of the memory map (works under every Keras backend)."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(rows)) if shuffle else np.arange(len(rows))

        def __len__(self) -> int:
            return math.ceil(len(rows) / batch_size)

        def __getitem__(self, i: int):
            idx = np.sort(self.order[i * batch_size:(i + 1) * batch_size])  # sorted: sequential memmap reads
            return pixels[rows[idx]], y[idx], weights[idx]

        def on_epoch_end(self) -> None:
            if shuffle:
                self.order = self.rng.permutation(len(rows))

    return Batches()


def carve_monitor_split(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Stratified, seeded split of the train items into (fit, monitor), by the same hash rule as the data split."""
    unsplit = ImageSet([replace(it, split=None) for it in items], None, "paths", [])
    marked = assign_splits(unsplit, validation_fraction=fraction, seed=seed + 1).items
    fit = [orig for orig, m in zip(items, marked) if m.split == "train"]
    monitor = [orig for orig, m in zip(items, marked) if m.split == "validation"]
    return fit, monitor


# -- result -----------------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    model_path: str
    label_names: list[str]
    backbone: str
    n_fit: int  # train-split images the weights were fitted on
    n_monitor: int  # train-split images held out for early stopping / best checkpoint
    history: dict  # per epoch: epoch, phase, loss, accuracy, val_loss, val_accuracy, seconds
    best_epoch: int  # 0 = the starting point (the linear probe) was never beaten on the monitor set
    best: dict  # monitor metrics of the kept weights
    probe: dict | None  # the linear probe the head started from
    unfrozen_blocks: list[str]
    seconds: float
    timings: dict  # decode / probe / head / finetune / save seconds
    settings: dict
    skipped: list[dict] = field(default_factory=list)
    random_weights: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        rows = [
            {"epoch": e, "phase": p, "loss": l, "accuracy": a, "val_loss": vl, "val_accuracy": va}
            for e, p, l, a, vl, va in zip(*(self.history[k] for k in ("epoch", "phase", "loss", "accuracy",
                                                                        "val_loss", "val_accuracy")))
        ]
        lines = [metrics.format_table(rows, ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"])]
        if self.probe:
            lines.append(f"head started from the linear probe: logistic regression L2, C={self.probe['C']:g} "
                         f"(CV accuracy {self.probe['cv_score']:.3f})")
        lines.append(f"unfrozen blocks {', '.join(self.unfrozen_blocks) or '(none)'}; kept epoch {self.best_epoch} "
                     f"(monitor set of {self.n_monitor} train images: val_accuracy "
                     f"{self.best['val_accuracy']:.3f}, val_loss {self.best['val_loss']:.4f})")
        lines.append(f"trained on {self.n_fit} images, {len(self.label_names)} classes, in {self.seconds:.1f} s "
                     f"→ {self.model_path}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files:")
            lines += [f"  - {s['path']}: {s['kind']}: {s['reason']}" for s in self.skipped[:20]]
        if self.random_weights:
            lines.append("WARNING: the backbone started from RANDOM weights (--weights none)")
        return "\n".join(lines)


class _EpochLog:
    """Keras callback (built lazily) that logs one line per epoch to featx's logger and times epochs."""

    def __new__(cls, phase: str, total: int):
        import keras

        class EpochLog(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.t)
                logs = logs or {}
                log.info("epoch %d/%d (%s): loss %.4f acc %.3f  val_loss %.4f val_acc %.3f  (%.1f s)", epoch + 1,
                         total, phase, logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
                         logs.get("val_loss", float("nan")), logs.get("val_accuracy", float("nan")),
                         self.seconds[-1])

        return EpochLog()


class _dtype_policy:
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


def _features_from_store(store: str | os.PathLike, bb: Backbone) -> dict[str, np.ndarray]:
    """relpath → frozen features from a store made with exactly this backbone (refused otherwise)."""
    from featx.store import FeatureStore

    with FeatureStore(store) as fs:
        linear.check_fingerprint(fs.fingerprint, bb.fingerprint, what=f"store {store}")
        return dict(zip(fs.paths.tolist(), fs.X))


def _probe_features(store_features: dict | None, images: _Images, bb: Backbone, batch_size: int) -> np.ndarray:
    """Frozen features of the decoded fit images: from the store when it has them all, else computed."""
    if store_features is None:
        return images.features
    if all(it.relpath in store_features for it in images.items):
        return np.stack([store_features[it.relpath] for it in images.items]).astype(np.float32)
    log.info("the store lacks some train images; computing the probe's features instead")
    n = len(images.items)
    out = [bb.predict(np.ascontiguousarray(images.pixels[i:i + batch_size])) for i in range(0, n, batch_size)]
    return np.concatenate(out)[:n]


def _mixed_policy(mixed_precision: bool | str) -> str | None:
    if not mixed_precision:
        return None
    if isinstance(mixed_precision, str) and mixed_precision not in ("auto", "true"):
        name = mixed_precision if mixed_precision.startswith("mixed_") else f"mixed_{mixed_precision}"
        if name not in ("mixed_float16", "mixed_bfloat16"):
            raise FinetuneError(f"mixed precision must be float16 or bfloat16, got {mixed_precision!r}")
        return name
    from featx.runtime import accelerators

    # float16 needs loss scaling but is what most GPUs run fastest; CPUs only have bfloat16 kernels.
    return "mixed_float16" if accelerators() else "mixed_bfloat16"


# -- fine-tune ------------------------------------------------------------------------------------------------
def finetune(
    data: str | os.PathLike | ImageSet,
    out: str | os.PathLike,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | tuple[int, int] | None = None,
    epochs: int = 10,
    unfreeze: int | str = 2,
    lr: float = 1e-4,
    head_init: str = "probe",
    head_epochs: int | None = None,
    head_lr: float = 1e-3,
    augment: str | Sequence[str] | None = DEFAULT_AUGMENT,
    batch_size: int = 32,
    mixed_precision: bool | str = False,
    dropout: float = 0.2,
    l2: float = 1e-4,
    class_weight: str | None = None,
    monitor: str = "val_loss",
    monitor_fraction: float = 0.1,
    patience: int = 3,
    store: str | os.PathLike | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    seed: int = 0,
    workers: int | None = None,
    allow_outside_root: bool = False,
    scratch_dir: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FinetuneResult:
    """Fine-tune `backbone` on the train split of `data` and save the best model to `out` (.keras).

    The data split is the one `featx extract` makes of the same `data` with the same fractions and
    seed, so a fine-tuned model and a linear probe are judged on the same held-out images.
    ``head_init="probe"`` (default) starts the head from the L2 logistic regression fitted on the
    frozen features (from `store` when it holds them, else computed), then fine-tunes right away
    (``head_epochs`` defaults to 0); ``"random"`` trains a fresh head first (default 5 epochs at
    ``head_lr``). ``unfreeze`` is the number of top blocks trained in phase two (or "all").
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    augment = parse_augment(augment)
    if head_init not in ("probe", "random"):
        raise FinetuneError(f"head_init must be 'probe' or 'random', got {head_init!r}")
    if monitor not in MONITORS:
        raise FinetuneError(f"monitor must be one of {MONITORS}, got {monitor!r}")
    if unfreeze != "all" and (not str(unfreeze).isdigit()):
        raise FinetuneError(f"unfreeze must be a number of blocks or 'all', got {unfreeze!r}")
    unfreeze = unfreeze if unfreeze == "all" else int(unfreeze)
    head_epochs = (0 if head_init == "probe" else 5) if head_epochs is None else int(head_epochs)
    for name, value in (("epochs", epochs), ("batch_size", batch_size - 1), ("patience", patience - 1),
                        ("head_epochs", head_epochs)):
        if int(value) < 0:
            raise FinetuneError(f"{name.replace('_', ' ')} is too small: {value}")
    if not 0 < monitor_fraction < 0.5:
        raise FinetuneError(f"monitor fraction must be in (0, 0.5), got {monitor_fraction}")
    if class_weight not in (None, "balanced"):
        raise FinetuneError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if not str(out).endswith(".keras"):
        raise FinetuneError(f"the model file must end in .keras (Keras' own format), got {str(out)!r}")
    policy = _mixed_policy(mixed_precision)

    image_set = data if isinstance(data, ImageSet) else load_source(data, allow_outside_root=allow_outside_root)
    image_set = assign_splits(image_set, validation_fraction=validation_fraction, test_fraction=test_fraction,
                              seed=split_seed)
    train_items = [it for it in image_set.items if it.split == "train" and it.label]
    label_names = sorted({it.label for it in train_items})
    if len(label_names) < 2:
        raise FinetuneError(f"fine-tuning needs at least 2 classes in the train split, found {label_names}")
    fit_items, monitor_items = carve_monitor_split(train_items, monitor_fraction, split_seed)
    short = sorted(c for c in label_names if sum(it.label == c for it in monitor_items) == 0)
    if short:
        raise FinetuneError(f"classes {short} have too few train images to hold some out for early stopping "
                            f"(monitor fraction {monitor_fraction})")

    import keras

    keras.utils.set_random_seed(seed)
    if policy:
        log.info("mixed precision: %s%s", policy, "" if policy == "mixed_float16" else
                 " (CPU: bfloat16 saves memory but is usually slower than float32 here)")
    with _dtype_policy(policy):
        bb = Backbone.build(backbone, weights=weights, image_size=image_size, seed=seed)
    index = {name: i for i, name in enumerate(label_names)}

    store_features = _features_from_store(store, bb) if (store and head_init == "probe") else None
    with tempfile.TemporaryDirectory(prefix="featx-finetune-", dir=scratch_dir) as scratch_name:
        scratch = Path(scratch_name)
        t = time.perf_counter()
        fit = _decode_images(fit_items, bb, scratch, batch_size=batch_size, workers=workers,
                             with_features=head_init == "probe" and store_features is None, max_pixels=max_pixels)
        (scratch / "monitor").mkdir()
        mon = _decode_images(monitor_items, bb, scratch / "monitor", batch_size=batch_size, workers=workers,
                             with_features=False, max_pixels=max_pixels)
        timings["decode"] = time.perf_counter() - t
        skipped = sorted(fit.skipped + mon.skipped, key=lambda s: s["path"])
        y_fit = np.array([index[it.label] for it in fit.items], np.int64)
        y_mon = np.array([index[it.label] for it in mon.items], np.int64)
        missing = [c for c in label_names if index[c] not in set(y_fit.tolist()) | set(y_mon.tolist())]
        if missing or len(fit.items) == 0:
            raise FinetuneError(f"no readable train images left for classes {missing or label_names}")
        if class_weight == "balanced":
            counts = np.bincount(y_fit, minlength=len(label_names)).astype(float)
            per_class = len(y_fit) / (len(label_names) * np.maximum(counts, 1))
        else:
            per_class = np.ones(len(label_names))
        w_fit, w_mon = per_class[y_fit].astype(np.float32), np.ones(len(y_mon), np.float32)

        with _dtype_policy(policy):
            model = build_model(bb, len(label_names), augment=augment, dropout=dropout, l2=l2, seed=seed)
        base = _inner_base(bb)
        base.trainable = False

        probe_info = None
        if head_init == "probe":
            t = time.perf_counter()
            X = _probe_features(store_features, fit, bb, batch_size)
            cv = int(max(2, min(5, np.bincount(y_fit).min())))
            result = linear.train(X, y_fit, classifier="logreg", penalty="l2", cv=cv, class_weight=class_weight,
                                  random_state=seed, label_names=label_names)
            kernel, bias = probe_head_weights(result.estimator, len(label_names))
            model.get_layer("featx_head").set_weights([kernel, bias])
            probe_info = {"classifier": "logreg", "penalty": "l2", "C": result.best.best_C,
                          "cv_score": result.best.cv_score_mean, "cv_folds": cv,
                          "features_from": "store" if store_features is not None else "computed"}
            timings["probe"] = time.perf_counter() - t

        history: dict[str, list] = {k: [] for k in ("epoch", "phase", "loss", "accuracy", "val_loss",
                                                    "val_accuracy", "seconds")}
        train_seq = _batches(fit.pixels, np.arange(len(fit.items)), y_fit, w_fit, batch_size=batch_size,
                             shuffle=True, seed=seed)
        mon_seq = _batches(mon.pixels, np.arange(len(mon.items)), y_mon, w_mon, batch_size=batch_size,
                           shuffle=False, seed=seed)

        def compile_model(learning_rate: float) -> None:
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                          loss="sparse_categorical_crossentropy",
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

        def record(phase: str, fit_history, seconds: list[float]) -> None:
            h = fit_history.history
            for i in range(len(h.get("loss", []))):
                history["epoch"].append(len(history["epoch"]))
                history["phase"].append(phase)
                for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    history[k].append(float(h[k][i]))
                history["seconds"].append(float(seconds[i]))

        def evaluate_monitor() -> dict:
            values = model.evaluate(mon_seq, verbose=0, return_dict=True)
            return {"val_loss": float(values["loss"]), "val_accuracy": float(values["accuracy"])}

        t = time.perf_counter()
        compile_model(head_lr)
        if head_epochs:
            cb = _EpochLog("head", head_epochs)
            record("head", model.fit(train_seq, validation_data=mon_seq, epochs=head_epochs, verbose=0,
                                     callbacks=[cb]), cb.seconds)
        start = evaluate_monitor()
        timings["head"] = time.perf_counter() - t
        # The starting point of phase two (the probe, or the last head epoch) is a candidate too:
        # fine-tuning has to beat it on the monitor set to be kept.
        if not head_epochs:
            start_row = {"epoch": 0, "phase": head_init, "loss": None, "accuracy": None, **start, "seconds": 0.0}
            for k, v in start_row.items():
                history[k].append(v)
        log.info("start of fine-tuning: val_loss %.4f val_acc %.3f on %d monitor images", start["val_loss"],
                 start["val_accuracy"], len(mon.items))

        t = time.perf_counter()
        unfrozen = unfreeze_top(base, unfreeze)
        start_weights = model.get_weights()
        best_path = scratch / "best.weights.h5"
        first_epoch = len(history["epoch"])
        if epochs and unfrozen:
            compile_model(lr)
            cb = _EpochLog("finetune", epochs)
            callbacks = [
                cb,
                keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=False),
                keras.callbacks.ModelCheckpoint(str(best_path), monitor=monitor, save_best_only=True,
                                                save_weights_only=True, initial_value_threshold=start[monitor]),
            ]
            record("finetune", model.fit(train_seq, validation_data=mon_seq, epochs=epochs, verbose=0,
                                         callbacks=callbacks), cb.seconds)
        elif epochs and not unfrozen:
            log.warning("unfreeze 0: no backbone block is trained; the model is the starting head")
        # Keep the best epoch on the monitor set, the starting point included (ties keep the earlier).
        candidates = list(range(first_epoch - 1, len(history["epoch"])))
        values = [history[monitor][i] for i in candidates]
        pick = int(np.argmin(values) if monitor == "val_loss" else np.argmax(values))
        best_epoch = history["epoch"][candidates[pick]]
        if best_epoch >= first_epoch and best_path.exists():
            model.load_weights(str(best_path))
        else:
            model.set_weights(start_weights)
        best = {k: history[k][candidates[pick]] for k in ("val_loss", "val_accuracy")}
        timings["finetune"] = time.perf_counter() - t
        base.trainable = False

        t = time.perf_counter()
        settings = {
            "epochs": epochs, "unfreeze": unfreeze, "lr": lr, "head_init": head_init, "head_epochs": head_epochs,
            "head_lr": head_lr, "augment": list(augment), "batch_size": batch_size, "mixed_precision": policy,
            "dropout": dropout, "l2": l2, "class_weight": class_weight, "monitor": monitor,
            "monitor_fraction": monitor_fraction, "patience": patience, "seed": seed,
        }
        metadata = {
            "featx_model": "finetuned", "format_version": FORMAT_VERSION, "label_names": label_names,
            "backbone": bb.fingerprint, "random_weights": bb.random_weights,
            "data": {"root": image_set.root, "layout": image_set.layout, "split_method": image_set.split_method},
            "settings": settings, "history": history, "best_epoch": best_epoch, "best": best, "probe": probe_info,
            "unfrozen_blocks": unfrozen, "n_fit": len(fit.items), "n_monitor": len(mon.items),
            "train_sha256": sorted(set(fit.sha256 + mon.sha256)), "skipped": skipped,
            "versions": versions(), "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        save_model(model, out, metadata)
        timings["save"] = time.perf_counter() - t
    return FinetuneResult(
        str(out), label_names, bb.spec.name, len(fit.items), len(mon.items), history, best_epoch, best, probe_info,
        unfrozen, time.perf_counter() - started, timings, settings, skipped, bb.random_weights,
    )


# -- model files ------------------------------------------------------------------------------------------------
def save_model(model, out: str | os.PathLike, metadata: dict) -> None:
    """Write the .keras file with featx's metadata inside, atomically (a crash leaves the old file or none)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import keras

    from featx.fileio import atomic_output

    with atomic_output(out, suffix=".tmp.keras") as tmp:  # Keras insists on the .keras extension
        # An uncompiled view of the same layers: the file holds no optimizer state (smaller, and
        # loading with compile=True does not warn about optimizer variables).
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(METADATA_ENTRY, json.dumps(metadata, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def is_keras_file(path: str | os.PathLike) -> bool:
    """True for a Keras v3 model file (a zip with config.json), whatever its name."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "config.json" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


@dataclass
class FinetunedModel:
    """A loaded fine-tuned model: uint8 pixels in, class probabilities out, with featx's metadata."""

    model: Any
    label_names: list[str]
    info: dict
    path: str
    _inference_model: Any = field(default=None, repr=False, compare=False)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.input_shape[1:3])  # type: ignore[return-value]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        if self._inference_model is None:
            # BatchNormalization folded into the convolutions: same output, faster (featx.fold)
            self._inference_model = fold_batchnorm(self.model)[0]
        return np.asarray(self._inference_model.predict_on_batch(pixels), np.float32)


def load_model(path: str | os.PathLike, *, allow_unsafe: bool = False) -> FinetunedModel:
    """Load a featx fine-tuned model with Keras' safe mode on.

    A model holding a Lambda layer (arbitrary Python code) is refused unless ``allow_unsafe=True``:
    loading it would run that code.
    """
    load_backend()
    import keras

    path = os.fspath(path)
    if not is_keras_file(path):
        raise linear.ModelFileError(f"{path} is not a Keras .keras model file")
    with zipfile.ZipFile(path) as zf:
        if METADATA_ENTRY not in zf.namelist():
            raise linear.ModelFileError(
                f"{path} is a Keras model but not one saved by `featx finetune` (no {METADATA_ENTRY} with its "
                "class names and backbone); load it with keras.saving.load_model")
        info = json.loads(zf.read(METADATA_ENTRY))
    if info.get("featx_model") != "finetuned" or int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise linear.ModelFileError(f"{path}: unsupported featx model format {info.get('format_version')}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not allow_unsafe)
    except ValueError as exc:
        if "unsafe" in str(exc).lower() or "lambda" in str(exc).lower():
            raise linear.UnsafeModelError(
                f"refused to load {path}: it contains a Lambda layer, i.e. Python code that loading would run. "
                "Load it only if you trust where it came from, with --allow-unsafe-model "
                "(allow_unsafe=True)") from exc
        raise
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or model.inputs[0].dtype != "uint8":
        raise linear.ModelFileError(f"{path}: expected a uint8 (N, H, W, 3) image input, got {shape} "
                                    f"{model.inputs[0].dtype}")
    return FinetunedModel(model, list(info["label_names"]), info, path)


# -- inference ----------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Class probabilities for items (rows in `items` order; skipped items are NaN rows)."""

    items: list[Item]
    probabilities: np.ndarray
    sha256: list[str]
    skipped: list[dict]
    seconds: float

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.probabilities).any(axis=1)


def predict_items(fm: FinetunedModel, items: list[Item], *, batch_size: int = 32, workers: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Predictions:
    """Decode with featx's reader and run the model on fixed-shape batches (padded at the end)."""
    started = time.perf_counter()
    position = {id(item): i for i, item in enumerate(items)}
    probs = np.full((len(items), len(fm.label_names)), np.nan, np.float32)
    hashes = [""] * len(items)
    skipped: list[dict] = []
    predict = BackoffPredictor(fm.predict, batch_size)  # halves the batch on out-of-memory, says so
    for result in pipeline.run(items, predict, image_size=fm.image_size, batch_size=batch_size,
                               workers=workers, max_pixels=max_pixels):
        for (item, decoded), row in zip(result.computed, result.features if result.computed else []):
            probs[position[id(item)]] = row
            hashes[position[id(item)]] = decoded.sha256
        skipped += [{"path": it.relpath, "kind": d.skip.kind, "reason": d.skip.detail} for it, d in result.skipped]
    return Predictions(items, probs, hashes, skipped, time.perf_counter() - started)


def predict_images(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, batch_size: int = 32,
                   workers: int | None = None, allow_unsafe: bool = False) -> dict:
    """`featx predict` for a fine-tuned model: same output as for a linear classifier."""
    from featx.classify import expand_images

    fm = load_model(model, allow_unsafe=allow_unsafe)
    paths = expand_images(inputs)
    out = predict_items(fm, [Item(p, display_path(p), None, None) for p in paths], batch_size=batch_size,
                        workers=workers)
    predictions = []
    for i in np.flatnonzero(out.ok):
        p = out.probabilities[i]
        predictions.append({
            "path": paths[i], "label": fm.label_names[int(p.argmax())], "sha256": out.sha256[i],
            "probabilities": {c: float(v) for c, v in zip(fm.label_names, p)}, "confidence": float(p.max()),
        })
    return {"model": str(model), "backbone": fm.info["backbone"]["backbone"],
            "random_weights": bool(fm.info.get("random_weights")), "predictions": predictions,
            "skipped": out.skipped}


def items_for_split(data: str | os.PathLike, split: str, *, split_method: dict | None = None,
                    allow_outside_root: bool = False) -> tuple[list[Item], list[str]]:
    """Labelled images of one split of a store (its recorded paths and splits) or of a data folder/CSV.

    For a folder without split folders, the split is remade with `split_method` (the rule recorded
    when the model was trained), so the held-out images are the same ones.
    """
    import h5py

    from featx.store import FeatureStore

    if os.path.isfile(data) and h5py.is_hdf5(data):
        with FeatureStore(data) as fs:
            root = fs.root
            if not root:
                raise SourceError(f"store {data} records no image root, so its images cannot be read again")
            names = fs.label_names
            items = [Item(os.path.join(root, p), p, names[int(y)] if y >= 0 else None, s)
                     for p, y, s in zip(fs.paths.tolist(), fs.y.tolist(), fs.splits.tolist())]
    else:
        image_set = load_source(data, allow_outside_root=allow_outside_root)
        method = split_method or {}
        if method.get("method") == "stratified-hash":
            image_set = assign_splits(image_set, validation_fraction=method["validation_fraction"],
                                      test_fraction=method["test_fraction"], seed=method["seed"])
        else:
            image_set = assign_splits(image_set)
        items, names = image_set.items, image_set.label_names
    chosen = [it for it in items if it.split == split and it.label]
    return chosen, sorted({it.label for it in chosen})


def evaluate(model: str | os.PathLike, data: str | os.PathLike, *, split: str = "validation",
             batch_size: int = 32, workers: int | None = None, allow_unsafe: bool = False,
             n_wrong: int = 12) -> dict:
    """Metrics of a fine-tuned model on a held-out split (of a store's recorded images, or of a data folder)."""
    if split == "train":
        raise ValueError("refusing to evaluate on the train split the model was fitted on")
    fm = load_model(model, allow_unsafe=allow_unsafe)
    items, present = items_for_split(data, split, split_method=fm.info.get("data", {}).get("split_method"))
    if not items:
        raise ValueError(f"{data} has no labelled images in split {split!r}")
    unknown = sorted(set(present) - set(fm.label_names))
    if unknown:
        raise ValueError(f"the {split} split has classes the model never saw: {unknown}")
    out = predict_items(fm, items, batch_size=batch_size, workers=workers)
    ok = out.ok
    if not ok.any():
        raise ValueError(f"no image of the {split} split could be read ({len(out.skipped)} skipped)")
    y_true = np.array([fm.label_names.index(it.label) for it in items], np.int64)[ok]
    probs = out.probabilities[ok]
    pred = probs.argmax(axis=1)
    result = metrics.evaluate(y_true, pred, label_names=fm.label_names, y_score=probs if probs.shape[1] == 2 else None)
    seen = set(fm.info.get("train_sha256", []))
    kept = [it for it, good in zip(items, ok) if good]
    kept_sha = [h for h, good in zip(out.sha256, ok) if good]
    result.update({
        "model": str(model), "model_name": "fine-tuned", "store": str(data), "split": split,
        "backbone": fm.info["backbone"]["backbone"], "random_weights": bool(fm.info.get("random_weights")),
        "skipped": out.skipped, "inference_seconds": out.seconds,
        "n_seen_in_training": sum(h in seen for h in kept_sha),
        "wrong": metrics.most_confidently_wrong([it.path for it in kept], y_true, pred, probs.max(axis=1),
                                                fm.label_names, k=n_wrong),
    })
    if result["n_seen_in_training"]:
        log.warning("%d image(s) of the %s split have the same content as a training image (duplicates across "
                    "splits inflate the score)", result["n_seen_in_training"], split)
    return result
