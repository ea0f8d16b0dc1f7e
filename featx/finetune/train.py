"""Fine-tuning, step by step as in the Keras transfer-learning guide, starting from the linear probe (LP-FT).

1. load the data and split it (the split `featx extract` makes), carve a monitor set out of train;
2. build the pretrained backbone (seeded, under the training dtype policy);
3. decode the images once (featx's reader) into uint8 memory maps;
4. build the model with the backbone frozen;
5. fit the head: by default it starts as the logistic-regression probe fitted on the frozen features
   (standardisation folded into the Dense weights), so fine-tuning starts where feature transfer
   ended (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features"); or a random head is
   trained for a few epochs first;
6. unfreeze the top blocks (BatchNormalization stays frozen and in inference mode), recompile at a
   low learning rate and fit with early stopping and the best checkpoint on the monitor set; keep the
   best epoch, the starting point included;
7. save the model with featx's metadata.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from featx import linear, metrics
from featx.backbones import DEFAULT_BACKBONE, Backbone
from featx.config import BackboneConfig, SplitConfig
from featx.decode import DEFAULT_MAX_PIXELS
from featx.finetune.data import (TrainingData, batches, decode_training_data, features_from_store,
                                 fit_and_monitor_items, probe_features)
from featx.finetune.files import FORMAT_VERSION, save_model
from featx.finetune.model import build_frozen_model, dtype_policy, probe_head_weights, unfreeze_top
from featx.finetune.settings import DEFAULT_AUGMENT, FinetuneError, FinetuneSettings
from featx.runtime import versions
from featx.sources import ImageSet, Item, load_source

log = logging.getLogger("featx")

HISTORY_KEYS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


# -- result -----------------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """What finetune() trained and kept: history, kept epoch, probe, settings (the model file records them too)."""

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


class _Trainer:
    """The model with its fit and monitor batches, and every epoch it has trained (`history`)."""

    def __init__(self, model, data: TrainingData, settings: FinetuneSettings):
        self.model = model
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.n_monitor = len(data.y_monitor)
        self.train_seq = batches(data.fit.pixels, data.y_fit, data.fit_weights, batch_size=settings.batch_size,
                                 shuffle=True, seed=settings.seed)
        self.monitor_seq = batches(data.monitor.pixels, data.y_monitor, np.ones(self.n_monitor, np.float32),
                                   batch_size=settings.batch_size, shuffle=False, seed=settings.seed)

    def compile(self, learning_rate: float) -> None:
        import keras

        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                           loss="sparse_categorical_crossentropy",
                           metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

    def fit(self, phase: str, epochs: int, callbacks: Sequence = ()) -> None:
        """Train up to `epochs` epochs (a callback may stop earlier) and append them to the history."""
        epoch_log = _EpochLog(phase, epochs)
        h = self.model.fit(self.train_seq, validation_data=self.monitor_seq, epochs=epochs, verbose=0,
                           callbacks=[epoch_log, *callbacks]).history
        for i in range(len(h.get("loss", []))):
            self.history["epoch"].append(len(self.history["epoch"]))
            self.history["phase"].append(phase)
            for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
                self.history[k].append(float(h[k][i]))
            self.history["seconds"].append(float(epoch_log.seconds[i]))

    def evaluate_monitor(self) -> dict:
        values = self.model.evaluate(self.monitor_seq, verbose=0, return_dict=True)
        return {"val_loss": float(values["loss"]), "val_accuracy": float(values["accuracy"])}

    def record_start(self, phase: str, metrics_at_start: dict) -> None:
        """An epoch-0 row for a starting point that was not trained here (the probe)."""
        row = {"epoch": 0, "phase": phase, "loss": None, "accuracy": None, **metrics_at_start, "seconds": 0.0}
        for k, v in row.items():
            self.history[k].append(v)


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - t


# -- the steps ------------------------------------------------------------------------------------------------
def _load_and_split(data: str | os.PathLike | ImageSet, split: SplitConfig, monitor_fraction: float,
                    allow_outside_root: bool) -> tuple[ImageSet, list[str], list[Item], list[Item]]:
    """1. The split image set, its class names, and the train split's fit and monitor items."""
    image_set = data if isinstance(data, ImageSet) else load_source(data, allow_outside_root=allow_outside_root)
    image_set = split.apply(image_set)
    return (image_set, *fit_and_monitor_items(image_set, monitor_fraction, split.seed))


def _seeded_backbone(cfg: BackboneConfig, settings: FinetuneSettings) -> Backbone:
    """2. Seed Keras' random state, then build the backbone under the training dtype policy."""
    import keras

    keras.utils.set_random_seed(settings.seed)
    policy = settings.mixed_precision
    if policy:
        log.info("mixed precision: %s%s", policy, "" if policy == "mixed_float16" else
                 " (CPU: bfloat16 saves memory but is usually slower than float32 here)")
    with dtype_policy(policy):
        return cfg.build(seed=settings.seed)


def _fit_probe_head(model, data: TrainingData, bb: Backbone, store_features: dict | None,
                    settings: FinetuneSettings, label_names: list[str]) -> dict:
    """5a. The head := the L2 logistic-regression probe on the frozen features (C by CV); returns its record."""
    X = probe_features(store_features, data.fit, bb, settings.batch_size)
    cv = int(max(2, min(5, np.bincount(data.y_fit).min())))
    result = linear.train(X, data.y_fit, classifier="logreg", penalty="l2", cv=cv,
                          class_weight=settings.class_weight, random_state=settings.seed, label_names=label_names)
    kernel, bias = probe_head_weights(result.estimator, len(label_names))
    model.get_layer("featx_head").set_weights([kernel, bias])
    return {"classifier": "logreg", "penalty": "l2", "C": result.best.best_C, "cv_score": result.best.cv_score_mean,
            "cv_folds": cv, "features_from": "store" if store_features is not None else "computed"}


def _fit_head(trainer: _Trainer, settings: FinetuneSettings) -> dict:
    """5b. Train the head alone if asked (`head_epochs`); returns the monitor metrics of phase two's start."""
    trainer.compile(settings.head_lr)
    if settings.head_epochs:
        trainer.fit("head", settings.head_epochs)
    start = trainer.evaluate_monitor()
    # The starting point of phase two (the probe, or the last head epoch) is a candidate too:
    # fine-tuning has to beat it on the monitor set to be kept.
    if not settings.head_epochs:
        trainer.record_start(settings.head_init, start)
    log.info("start of fine-tuning: val_loss %.4f val_acc %.3f on %d monitor images", start["val_loss"],
             start["val_accuracy"], trainer.n_monitor)
    return start


def _finetune_top_blocks(trainer: _Trainer, base, settings: FinetuneSettings, start: dict,
                         best_path: Path) -> tuple[list[str], int, dict]:
    """6. Unfreeze the top blocks, recompile at the low learning rate, fit with early stopping and the
    best checkpoint; keep the best weights. Returns (unfrozen blocks, kept epoch, its monitor metrics)."""
    import keras

    unfrozen = unfreeze_top(base, settings.unfreeze)
    start_weights = trainer.model.get_weights()
    first_epoch = len(trainer.history["epoch"])
    if settings.epochs and unfrozen:
        trainer.compile(settings.lr)
        trainer.fit("finetune", settings.epochs, [
            keras.callbacks.EarlyStopping(monitor=settings.monitor, patience=settings.patience,
                                          restore_best_weights=False),
            keras.callbacks.ModelCheckpoint(str(best_path), monitor=settings.monitor, save_best_only=True,
                                            save_weights_only=True, initial_value_threshold=start[settings.monitor]),
        ])
    elif settings.epochs and not unfrozen:
        log.warning("unfreeze 0: no backbone block is trained; the model is the starting head")
    best_epoch, best = _best_epoch(trainer.history, first_epoch, settings.monitor)
    if best_epoch >= first_epoch and best_path.exists():
        trainer.model.load_weights(str(best_path))
    else:
        trainer.model.set_weights(start_weights)
    base.trainable = False
    return unfrozen, best_epoch, best


def _best_epoch(history: dict[str, list], first_epoch: int, monitor: str) -> tuple[int, dict]:
    """The best epoch on the monitor set from phase two's start on (ties keep the earlier), and its metrics."""
    candidates = list(range(first_epoch - 1, len(history["epoch"])))
    values = [history[monitor][i] for i in candidates]
    pick = candidates[int(np.argmin(values) if monitor == "val_loss" else np.argmax(values))]
    return history["epoch"][pick], {k: history[k][pick] for k in ("val_loss", "val_accuracy")}


def _metadata(result: FinetuneResult, bb: Backbone, image_set: ImageSet, data: TrainingData) -> dict:
    """7. featx's entry of the model file: what was trained on what, how, and how it went."""
    return {
        "featx_model": "finetuned", "format_version": FORMAT_VERSION, "label_names": result.label_names,
        "backbone": bb.fingerprint, "random_weights": bb.random_weights,
        "data": {"root": image_set.root, "layout": image_set.layout, "split_method": image_set.split_method},
        "settings": result.settings, "history": result.history, "best_epoch": result.best_epoch,
        "best": result.best, "probe": result.probe, "unfrozen_blocks": result.unfrozen_blocks,
        "n_fit": result.n_fit, "n_monitor": result.n_monitor,
        "train_sha256": sorted(set(data.fit.sha256 + data.monitor.sha256)), "skipped": result.skipped,
        "versions": versions(), "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- fine-tune ------------------------------------------------------------------------------------------------
def finetune(
    data: str | os.PathLike | ImageSet,
    out: str | os.PathLike,
    *,
    backbone: str | BackboneConfig = DEFAULT_BACKBONE,
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
    settings: FinetuneSettings | None = None,
) -> FinetuneResult:
    """Fine-tune `backbone` on the train split of `data` and save the best model to `out` (.keras).

    The data split is the one `featx extract` makes of the same `data` with the same fractions and
    seed, so a fine-tuned model and a linear probe are judged on the same held-out images.
    ``head_init="probe"`` (default) starts the head from the L2 logistic regression fitted on the
    frozen features (from `store` when it holds them, else computed), then fine-tunes right away
    (``head_epochs`` defaults to 0); ``"random"`` trains a fresh head first (default 5 epochs at
    ``head_lr``). ``unfreeze`` is the number of top blocks trained in phase two (or "all").
    `backbone` may be a BackboneConfig and `settings` a FinetuneSettings; keywords that differ from
    their defaults override them.
    """
    started = time.perf_counter()
    cfg = BackboneConfig.coerce(backbone, weights=weights, image_size=image_size)
    settings = FinetuneSettings.coerce(
        settings, epochs=epochs, unfreeze=unfreeze, lr=lr, head_init=head_init, head_epochs=head_epochs,
        head_lr=head_lr, augment=augment, batch_size=batch_size, mixed_precision=mixed_precision, dropout=dropout,
        l2=l2, class_weight=class_weight, monitor=monitor, monitor_fraction=monitor_fraction, patience=patience,
        seed=seed).check()
    if not str(out).endswith(".keras"):
        raise FinetuneError(f"the model file must end in .keras (Keras' own format), got {str(out)!r}")
    split = SplitConfig(validation_fraction, test_fraction, split_seed)
    image_set, label_names, fit_items, monitor_items = _load_and_split(data, split, settings.monitor_fraction,
                                                                       allow_outside_root)
    bb = _seeded_backbone(cfg, settings)
    from_probe = settings.head_init == "probe"
    store_features = features_from_store(store, bb) if (store and from_probe) else None
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="featx-finetune-", dir=scratch_dir) as scratch_name:
        scratch = Path(scratch_name)
        with _timed(timings, "decode"):
            train_data = decode_training_data(fit_items, monitor_items, label_names, bb, scratch, settings,
                                              workers=workers, with_features=from_probe and store_features is None,
                                              max_pixels=max_pixels)
        model, base = build_frozen_model(bb, len(label_names), settings)
        probe = None
        if from_probe:
            with _timed(timings, "probe"):
                probe = _fit_probe_head(model, train_data, bb, store_features, settings, label_names)
        trainer = _Trainer(model, train_data, settings)
        with _timed(timings, "head"):
            start = _fit_head(trainer, settings)
        with _timed(timings, "finetune"):
            unfrozen, best_epoch, best = _finetune_top_blocks(trainer, base, settings, start,
                                                              scratch / "best.weights.h5")
        result = FinetuneResult(
            str(out), label_names, bb.spec.name, len(train_data.fit.items), len(train_data.monitor.items),
            trainer.history, best_epoch, best, probe, unfrozen, 0.0, timings, settings.to_dict(),
            train_data.skipped, bb.random_weights)
        with _timed(timings, "save"):
            save_model(model, out, _metadata(result, bb, image_set, train_data))
    result.seconds = time.perf_counter() - started
    return result
