"""The `featx` argument parser: one builder per command, plus the option groups commands share.

Defaults come from the library (featx.config's BackboneConfig and SplitConfig, the decoder, precision
and timeout constants), so the CLI cannot drift from what `extract()` and friends do when called
from Python. Nothing here imports Keras: `featx --help` and usage errors stay quick.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from featx.audit import NEAR_THRESHOLDS, OUTLIER_Z, SIMILARITIES, WHITEN_MIN_ROWS
from featx.backbones import POOLINGS
from featx.cli import commands
from featx.config import BackboneConfig, SplitConfig
from featx.featuresets import VIEWS
from featx.tune import DEFAULT_BUDGET
from featx.finetune.settings import AUGMENTATIONS, MONITORS, FinetuneSettings
from featx.gpudecode import DECODERS, DEFAULT_DECODER
from featx.pipeline import DEFAULT_IMAGE_TIMEOUT
from featx.precision import PRECISIONS

BACKBONE_DEFAULTS = {f.name: f.default for f in fields(BackboneConfig)}
SPLIT_DEFAULTS = {f.name: f.default for f in fields(SplitConfig)}
FINETUNE_DEFAULTS = {f.name: f.default for f in fields(FinetuneSettings)}  # featx.finetune.settings: no Keras

OFFLINE_HELP = ("never touch the network: ImageNet weights missing from the Keras cache are an error, not a "
                "download (also FEATX_OFFLINE=1)")
WEIGHTS_HELP = ("imagenet (default): the Keras cache ($KERAS_HOME/models), else downloaded there on first use "
                "from keras.applications' address or FEATX_WEIGHTS_MIRROR; a weights file path; or none (random)")
VIEWS_HELP = ("views averaged into each image's row: one (default), flip (image + mirror, 2× the model cost) or "
              "flip+crops (+ the central 7/8 crop and its mirror, 4×); recorded in the fingerprint")
CLUSTER_METAVAR = "local[:N]|tcp://HOST:PORT"
UNSAFE_MODEL_HELP = "load a .keras model even if it holds Lambda layers (runs their code: trusted files only)"


# -- argument types (argparse turns their errors into exit 2) ---------------------------------------
def _batch_size(text: str) -> int | str:
    """--batch-size: a positive integer, or auto (chosen from the free memory of the device)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """A duration: seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


# -- option groups shared by several commands -------------------------------------------------------
def _add_offline(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: the subcommand's flag must not reset a global `featx --offline` to False
    p.add_argument("--offline", action="store_true", default=argparse.SUPPRESS, help=OFFLINE_HELP)


def _add_json(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--json", action="store_true", help=help)


def _add_backbone_options(p: argparse.ArgumentParser) -> None:
    """--backbone, --weights and --offline (the rest of BackboneConfig is command-specific)."""
    name = BACKBONE_DEFAULTS["name"]
    p.add_argument("--backbone", default=name,
                   help=f"registry name (default: {name}; see `featx backbones`; "
                        "mobilenet_0.25 ships with featx and never downloads)")
    p.add_argument("--weights", default=BACKBONE_DEFAULTS["weights"], help=WEIGHTS_HELP)
    _add_offline(p)


def _add_cv_options(p: argparse.ArgumentParser, folds_for: str = "choosing C", n_jobs: bool = True) -> None:
    """--cv (and --n-jobs): the same meaning and defaults in train, compare, tune and audit."""
    p.add_argument("--cv", type=int, default=5, help=f"folds for {folds_for} (default %(default)s)")
    if n_jobs:
        p.add_argument("--n-jobs", type=int, default=-1, help="parallel CV fits (default -1: all cores)")


def _add_split_options(p: argparse.ArgumentParser, validation_help: str | None = None) -> None:
    """SplitConfig's fields, for sets without split folders."""
    p.add_argument("--validation-fraction", type=float, default=SPLIT_DEFAULTS["validation_fraction"],
                   help=validation_help)
    p.add_argument("--test-fraction", type=float, default=SPLIT_DEFAULTS["test_fraction"])
    p.add_argument("--split-seed", type=int, default=SPLIT_DEFAULTS["seed"])


def _add_feature_options(p: argparse.ArgumentParser) -> None:
    """--views and --layers: BackboneConfig's feature settings (featx.featuresets)."""
    p.add_argument("--views", choices=VIEWS, default=BACKBONE_DEFAULTS["views"], help=VIEWS_HELP)
    p.add_argument("--layers", default=None, metavar="LAYER[:POOL],...",
                   help="several feature sets in one pass, side by side: layer names (final = the last block) "
                        "with an optional :avg or :max, e.g. final:avg,final:max,conv_pw_11_relu; "
                        "`featx info` lists them, `featx train --features` picks one")


# -- one builder per command ------------------------------------------------------------------------
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="extract features of an image set into a store",
                       description="Extract features of an image set into an HDF5 store (resumable: images "
                                   "already in the store are not recomputed). Example: featx extract "
                                   "data/cats_dogs --store cache/cd.h5 --backbone mobilenet_0.25")
    p.add_argument("data", help="folder of class folders (optionally under train/ validation/ test/), "
                                "or a CSV manifest path,label[,split]")
    p.add_argument("--store", required=True, help="the HDF5 store to create or extend")
    _add_backbone_options(p)
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="images per model call, or auto (default): the largest power of two whose activations "
                        "fit a share of the free memory, at most 64 on a CPU and 512 on a GPU; halved on "
                        "out-of-memory either way")
    p.add_argument("--image-size", type=int, default=None, help="square input size (default: the backbone's)")
    p.add_argument("--pooling", choices=list(POOLINGS), default=BACKBONE_DEFAULTS["pooling"])
    p.add_argument("--layer", default=BACKBONE_DEFAULTS["layer"], help="take features from this named layer instead")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--precision", choices=list(PRECISIONS), default=BACKBONE_DEFAULTS["precision"],
                   help="what the model computes in (16 bits: faster on GPUs, features differ by round-off; "
                        "recorded in the store's fingerprint)")
    p.add_argument("--decoder", choices=list(DECODERS), default=DEFAULT_DECODER,
                   help="JPEG decoder: cpu (default), gpu (torchvision nvJPEG; an error if it cannot run) or "
                        "auto (gpu when usable; the summary says which ran)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding threads (default: one per core, up to two per core while the model waits)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="gpu fails unless a GPU is usable; auto uses one when present")
    _add_split_options(p, "for sets without split folders: stratified fraction held out "
                          f"(default {SPLIT_DEFAULTS['validation_fraction']:g})")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept manifest paths outside the manifest's folder")
    p.add_argument("--prune", action="store_true", help="drop store rows of files no longer in the set")
    p.add_argument("--image-timeout", type=_seconds, default=DEFAULT_IMAGE_TIMEOUT, metavar="S",
                   help="skip (as 'timeout') an image not read and decoded within S seconds "
                        f"(default {DEFAULT_IMAGE_TIMEOUT:g}; 0: no limit)")
    _add_extract_cluster_options(p)
    p.add_argument("--no-progress", action="store_true")
    _add_json(p, "print the summary as JSON")
    _add_feature_options(p)
    p.set_defaults(func=commands.cmd_extract)


def _add_extract_cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=None, metavar=CLUSTER_METAVAR,
                   help="extract on Dask workers: local (a cluster on this machine, one worker per GPU or core), "
                        "local:N, or a scheduler address; shards are merged into --store (needs featx[dask])")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="with --cluster: shards to split the work into (default: one per worker, up to 4 per worker "
                        "for big sets; an unfinished run's count to resume it)")
    p.add_argument("--keep-shards", action="store_true", help="with --cluster: keep STORE.shards/ after merging")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="extract only shard i of N (counted from 0) into STORE.shards/ (no Dask; e.g. a Slurm array "
                        "job); join with `featx merge STORE`")


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="join shard stores into one store",
                       description="Append the rows and skipped files of shard stores (from `featx extract --shard "
                                   "i/N`) to STORE through its journal; refuses shards of another backbone "
                                   "configuration or dtype; merging twice adds nothing. Example: featx merge "
                                   "cache/cd.h5   (all of cache/cd.h5.shards/shard-*.h5)")
    p.add_argument("store", help="the store to create or extend")
    p.add_argument("shards", nargs="*", metavar="SHARD", help="shard stores (default: every STORE.shards/shard-*.h5)")
    p.add_argument("--delete-shards", action="store_true", help="delete the shard stores once merged")
    _add_json(p)
    p.set_defaults(func=commands.cmd_merge)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train linear classifiers on a store's train split",
                       description="Train logistic regression / linear SVM (L1 or L2) on the train split; "
                                   "C by stratified k-fold CV. Example: featx train cache/cd.h5 --out "
                                   "cache/cd.skops --classifier all --penalty all")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="classifier file to write (.skops)")
    p.add_argument("--classifier", choices=["logreg", "svm", "all"], default="logreg")
    p.add_argument("--penalty", choices=["l1", "l2", "elasticnet", "all"], default="l2",
                   help="elasticnet needs --sgd (all: l1, l2 and, with --sgd, elasticnet)")
    _add_cv_options(p)
    p.add_argument("--class-weight", choices=["balanced"], default=None)
    p.add_argument("--calibrate", action="store_true", help="calibrated probabilities for the SVM")
    p.add_argument("--seed", type=int, default=0)
    _add_sgd_options(p)
    _add_json(p)
    p.add_argument("--features", default=None, metavar="NAME|all|best",
                   help="the store's feature set to train on (`featx info` lists them), all (the whole row, the "
                        "default) or best (each set and all, the best CV score kept)")
    p.set_defaults(func=commands.cmd_train)


def _add_sgd_options(p: argparse.ArgumentParser) -> None:
    # None = not given: --sgd-only flags are refused without --sgd, and train_store_sgd's defaults apply
    p.add_argument("--sgd", action="store_true",
                   help="out of core, for stores larger than memory: averaged SGD chunk by chunk (svm: hinge, "
                        "logreg: log loss), alpha chosen on a held-out part of the train split")
    p.add_argument("--alpha", type=float, nargs="+", default=None,
                   help="with --sgd: regularisation strengths to try (default 1e-6 1e-5 1e-4 1e-3 1e-2)")
    p.add_argument("--l1-ratio", type=float, default=None, help="with --sgd: elastic-net L1 share (default 0.15)")
    p.add_argument("--epochs", type=int, default=None, help="with --sgd: passes over the train split (default 5)")
    p.add_argument("--chunk-size", type=int, default=None, help="with --sgd: rows in memory at a time (default 4096)")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="with --sgd: part of the train split that scores the candidates (default 0.2)")
    p.add_argument("--cluster", default=None, metavar=CLUSTER_METAVAR,
                   help="with --sgd: run the candidates on Dask workers (joblib's dask backend; needs featx[dask])")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a classifier on a held-out split",
                       description="Accuracy, precision, recall, F1, confusion matrix (and ROC-AUC when "
                                   "binary) on a split never used for selection. Example: featx evaluate "
                                   "cache/cd.skops cache/cd.h5 --split validation --json. A fine-tuned .keras "
                                   "model reads the images the store records (or a data folder) instead.")
    p.add_argument("model", help="a .skops classifier (featx train) or a .keras model (featx finetune)")
    p.add_argument("store", help="the store (or, for a .keras model, the store or the data folder/CSV)")
    p.add_argument("--split", choices=["validation", "test"], default="validation")
    p.add_argument("--confusion-png", default=None, help="where to write the confusion matrix PNG")
    p.add_argument("--batch-size", type=int, default=32, help=".keras models: inference batch size")
    p.add_argument("--workers", type=int, default=None, help=".keras models: decoding threads")
    p.add_argument("--allow-unsafe-model", action="store_true", help=UNSAFE_MODEL_HELP)
    _add_json(p)
    p.set_defaults(func=commands.cmd_evaluate)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify images with a saved classifier",
                       description="Extract with the classifier's recorded backbone and predict. "
                                   "Example: featx predict cache/cd.skops photo.jpg more_photos/ --json")
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", default=None, help="the weights file, if the backbone used one")
    _add_offline(p)
    p.add_argument("--allow-unsafe-model", action="store_true", help=UNSAFE_MODEL_HELP)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    _add_json(p)
    p.set_defaults(func=commands.cmd_predict)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what is in a store", description="Example: featx info cache/cd.h5 --json")
    p.add_argument("store")
    _add_json(p)
    p.add_argument("--verify", action="store_true",
                   help="recompute the checksums recorded when the store was written; exit 1 unless they match")
    p.set_defaults(func=commands.cmd_info)


def _add_backbones(sub) -> None:
    p = sub.add_parser("backbones", help="list the backbone registry",
                       description="Every backbone with input size, feature width and where its ImageNet "
                                   "weights come from: vendored with featx, cached in $KERAS_HOME/models, or "
                                   "downloaded on first use (with the download's size). Example: featx backbones --json")
    _add_json(p)
    _add_offline(p)
    p.set_defaults(func=commands.cmd_backbones)


def _add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by `finetune` and `compare`."""
    p.add_argument("data", help="folder of class folders (optionally under train/ validation/ test/), or a CSV")
    _add_backbone_options(p)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=FINETUNE_DEFAULTS["epochs"],
                   help="fine-tuning epochs at most (early stopping; default %(default)s)")
    p.add_argument("--unfreeze", default=str(FINETUNE_DEFAULTS["unfreeze"]),
                   help="top blocks to train, or 'all' (default %(default)s)")
    p.add_argument("--lr", type=float, default=FINETUNE_DEFAULTS["lr"],
                   help="fine-tuning learning rate (Adam; default %(default)s)")
    p.add_argument("--augment", default=",".join(FINETUNE_DEFAULTS["augment"]),
                   help=f"comma list of {','.join(AUGMENTATIONS)} or none (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=FINETUNE_DEFAULTS["batch_size"])
    p.add_argument("--mixed-precision", nargs="?", const="auto", default=False, choices=["auto", "float16", "bfloat16"],
                   help="train in mixed precision (auto: float16 on a GPU, bfloat16 on CPU)")
    p.add_argument("--patience", type=int, default=FINETUNE_DEFAULTS["patience"],
                   help="early-stopping patience in epochs")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    _add_split_options(p)
    p.add_argument("--seed", type=int, default=FINETUNE_DEFAULTS["seed"])
    p.add_argument("--allow-outside-root", action="store_true")


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune the backbone's top blocks (parameter transfer)",
                       description="Two phases the Keras way, starting from the linear probe (LP-FT): the head is "
                                   "the L2 logistic regression fitted on the frozen features, then the top K blocks "
                                   "train at a low learning rate with BatchNormalization frozen, with augmentation, "
                                   "early stopping and the best checkpoint chosen on part of the train split. "
                                   "Example: featx finetune data/cats_dogs --out cache/cd.keras --backbone "
                                   "mobilenet_0.25 --epochs 10 --unfreeze 2")
    _add_finetune_arguments(p)
    p.add_argument("--out", required=True, help="the model file to write (.keras)")
    p.add_argument("--store", default=None, help="a store of this data and backbone: the probe reuses its features")
    p.add_argument("--head-init", choices=["probe", "random"], default=FINETUNE_DEFAULTS["head_init"],
                   help="probe (LP-FT, default) or a random head trained first for --head-epochs")
    p.add_argument("--head-epochs", type=int, default=None, help="phase-one epochs (default 0 with probe, 5 random)")
    p.add_argument("--head-lr", type=float, default=FINETUNE_DEFAULTS["head_lr"])
    p.add_argument("--dropout", type=float, default=FINETUNE_DEFAULTS["dropout"])
    p.add_argument("--l2", type=float, default=FINETUNE_DEFAULTS["l2"], help="L2 weight decay on the head")
    p.add_argument("--class-weight", choices=["balanced"], default=None)
    p.add_argument("--monitor", choices=MONITORS, default=FINETUNE_DEFAULTS["monitor"])
    p.add_argument("--monitor-fraction", type=float, default=FINETUNE_DEFAULTS["monitor_fraction"],
                   help="stratified part of the train split held out for early stopping (default %(default)s)")
    _add_json(p)
    p.set_defaults(func=commands.cmd_finetune)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="feature transfer vs fine-tuning on one split, as a report",
                       description="Extracts features, trains logistic regression and linear SVM (L1, L2; C by CV "
                                   "on train) and an LP-FT fine-tuned model with the same backbone, weights, split "
                                   "and seed, evaluates all once on the held-out split and writes report.md, "
                                   "report.json and a self-contained report.html. Example: featx compare "
                                   "data/cats_dogs --out reports/cd --backbone mobilenet_0.25")
    _add_finetune_arguments(p)
    p.add_argument("--out", required=True, help="report folder (holds the store, the models and the report)")
    p.add_argument("--split", choices=["validation", "test"], default="validation",
                   help="held-out split for the numbers (never used for any selection)")
    p.add_argument("--views", choices=VIEWS, default=BACKBONE_DEFAULTS["views"],
                   help=VIEWS_HELP + " (the feature-transfer side; fine-tuning sees one view per image)")
    _add_cv_options(p)
    p.add_argument("--no-progress", action="store_true")
    _add_json(p)
    p.set_defaults(func=commands.cmd_compare)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo on scikit-learn's digits",
                       description="Writes scikit-learn's bundled digits as PNG class folders, then runs "
                                   "extract → train (LR and SVM, L1 and L2) → evaluate with the vendored "
                                   "mobilenet_0.25 backbone. Example: featx demo")
    p.add_argument("--workdir", default="cache/demo")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=commands.cmd_demo)


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune", help="search input size, views and feature sets by CV on the train split",
        description="Extract one store per input size × views (kept under OUT/stores; a rerun recomputes "
                    "nothing), score each feature set by CV accuracy on the train split, show the score next to "
                    "the extraction cost, choose (best CV; within one standard error of it, the cheapest) and "
                    "evaluate the chosen recipe once on the held-out split. Example: featx tune data/flowers "
                    "--out cache/tune --backbone mobilenet_0.25 --budget 3")
    p.add_argument("data", help="folder of class folders (optionally under train/ validation/ test/), or a CSV")
    p.add_argument("--out", required=True, help="folder for the stores, costs.json and the chosen classifier")
    _add_backbone_options(p)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="input sizes besides the default (default: 8/7 and 9/7 of it, e.g. 256 288)")
    p.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
    p.add_argument("--layers", default="final:max", metavar="LAYER[:POOL],...",
                   help="feature sets besides final:avg, from the same pass (default final:max; '' for none)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help="largest estimated extraction-cost ratio vs the default recipe to try (default %(default)s)")
    p.add_argument("--max-recipes", type=int, default=None,
                   help="extract at most this many stores (size × views), cheapest first")
    _add_cv_options(p, "scoring each recipe")
    p.add_argument("--classifier", choices=["logreg", "svm"], default="logreg")
    p.add_argument("--split", choices=["validation", "test"], default="validation",
                   help="held-out split, used once, for the chosen recipe")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (fixed, so costs compare)")
    p.add_argument("--workers", type=int, default=None)
    _add_split_options(p)
    p.add_argument("--no-progress", action="store_true")
    _add_json(p)
    p.set_defaults(func=commands.cmd_tune)


def _add_audit(sub) -> None:
    p = sub.add_parser(
        "audit", help="find label errors, duplicates and leaks between splits, outliers, class imbalance",
        description="Audits the data behind a store from its cached features (no image is decoded, nothing is "
                    "modified): likely label errors (out-of-fold linear probe + confident learning), exact and "
                    "near duplicates (leaks across splits first), outliers and class balance. Example: featx "
                    "audit cache/flowers.h5 --out reports/flowers-audit")
    p.add_argument("store")
    p.add_argument("--out", default=None, help="folder for audit.json and audit.html (with thumbnails)")
    _add_json(p, "print every finding as JSON")
    p.add_argument("--fix-manifest", default=None, metavar="CSV",
                   help="write a CSV manifest (path,label,split,suggested_label) without the leaked copies")
    _add_cv_options(p, "the out-of-fold probe", n_jobs=False)
    p.add_argument("--similarity", choices=SIMILARITIES, default="auto",
                   help=f"space in which features are compared for near duplicates: whitened (PCA-whitened, "
                        f"from {WHITEN_MIN_ROWS:,} rows) or centred (default auto: whitened when the store is "
                        "large enough)")
    p.add_argument("--near-threshold", type=float, default=None,
                   help="cosine similarity in that space from which two files are near duplicates (default "
                        + ", ".join(f"{v} {k}" for k, v in NEAR_THRESHOLDS.items()) + ")")
    p.add_argument("--outlier-z", type=float, default=OUTLIER_Z,
                   help="robust z-score from which an image is an outlier (default %(default)s)")
    p.add_argument("--neighbours", choices=["auto", "exact", "ivf"], default="auto",
                   help="neighbour search: exact up to 100,000 rows, faiss IVF above (default auto)")
    p.add_argument("--top", type=int, default=10, help="findings of each kind shown on the terminal")
    p.set_defaults(func=commands.cmd_audit)


COMMAND_BUILDERS = (_add_extract, _add_merge, _add_train, _add_evaluate, _add_predict, _add_info, _add_backbones,
                    _add_finetune, _add_compare, _add_tune, _add_audit,
                    _add_demo)


def build_parser() -> argparse.ArgumentParser:
    """The `featx` parser; each subcommand's parsed arguments carry its ``cmd_*`` function as ``func``."""
    from featx import __version__

    parser = argparse.ArgumentParser(
        prog="featx",
        description="Transfer learning on images: extract pretrained-CNN features into an HDF5 store once, "
                    "then train and evaluate linear classifiers on them in seconds.",
    )
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--offline", action="store_true", default=False, help=OFFLINE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMAND_BUILDERS:
        add_command(sub)
    return parser
