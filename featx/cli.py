"""The `featx` command line: argument parsing and printing only; every command calls the library.

Exit codes: 0 success (skipped files are allowed and reported), 1 failure, 2 usage error (bad
arguments, or an input path that does not exist or is the wrong kind: a folder given as a store).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from featx.runtime import quiet_backend_logs

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments found after parsing (exit code 2)."""


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


# -- commands ------------------------------------------------------------------------------------
def cmd_extract(args) -> int:
    from featx.extract import ExtractionInterrupted, extract

    if args.cluster and args.shard:
        raise UsageError("--cluster and --shard exclude each other (--shard is for schedulers without Dask)")
    if (args.shards is not None or args.keep_shards) and not args.cluster:
        raise UsageError("--shards and --keep-shards go with --cluster")
    if args.shard and args.prune:
        raise UsageError("--prune with --shard would drop the other shards' images; prune in a run without --shard")
    options = dict(
        backbone=args.backbone, weights=args.weights, image_size=args.image_size, pooling=args.pooling,
        layer=args.layer, batch_size=args.batch_size, dtype=args.dtype, precision=args.precision,
        decoder=args.decoder, workers=args.workers, device=args.device,
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction, split_seed=args.split_seed,
        allow_outside_root=args.allow_outside_root, progress=not args.no_progress,
        image_timeout=args.image_timeout or None,
    )
    try:
        if args.cluster:
            from featx.distributed import extract_distributed, parse_cluster

            try:
                cluster = parse_cluster(args.cluster)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            summary = extract_distributed(args.data, args.store, cluster=cluster, n_shards=args.shards,
                                          keep_shards=args.keep_shards, prune=args.prune, **options)
        elif args.shard:
            from featx.distributed import extract_shard, parse_shard

            try:
                shard = parse_shard(args.shard)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            summary = extract_shard(args.data, args.store, shard, **options)
        else:
            summary = extract(args.data, args.store, prune=args.prune, **options)
    except ExtractionInterrupted as exc:
        print(exc.summary.format(), file=sys.stderr)
        return 130
    _print_json(summary.to_dict()) if args.json else print(summary.format())
    return EXIT_OK


def cmd_merge(args) -> int:
    from featx.distributed import merge

    report = merge(args.store, args.shards or None, remove=args.delete_shards)
    _print_json(report.to_dict()) if args.json else print(report.format())
    return EXIT_OK


def cmd_train_sgd(args) -> int:
    from featx.linear.store_training import train_store_sgd
    from featx.metrics import format_table

    report = train_store_sgd(
        args.store, args.out, classifier=args.classifier, penalty=args.penalty, alphas=args.alpha,
        l1_ratio=args.l1_ratio, epochs=args.epochs, chunk_size=args.chunk_size,
        holdout_fraction=args.holdout_fraction, class_weight=args.class_weight, random_state=args.seed,
        cluster=args.cluster, n_jobs=args.n_jobs,
    )
    if args.json:
        _print_json(report.to_dict())
        return EXIT_OK
    if report.random_weights:
        print("WARNING: this store's features come from RANDOM weights (--weights none)")
    print(f"trained by chunked SGD on {report.n_train} images of the train split, {len(report.label_names)} classes; "
          f"alpha chosen on a held-out {args.holdout_fraction:g} of that split"
          + (f", candidates run on {args.cluster}" if args.cluster else "") + f" ({report.seconds:.1f} s)")
    print(format_table(report.candidates, ["loss", "penalty", "alpha", "holdout_accuracy", "fit_seconds", "host"]))
    print(f"kept {report.name} → {report.model_path}")
    return EXIT_OK


def cmd_train(args) -> int:
    from featx.classify import train_store
    from featx.metrics import format_table

    if args.cluster and not args.sgd:
        raise UsageError("--cluster trains with --sgd (the out-of-core search); in-memory training uses --n-jobs")
    if args.penalty == "elasticnet" and not args.sgd:
        raise UsageError("--penalty elasticnet needs --sgd")
    sgd_only = [flag for flag, value in (("--alpha", args.alpha), ("--l1-ratio", args.l1_ratio),
                                          ("--epochs", args.epochs), ("--chunk-size", args.chunk_size),
                                          ("--holdout-fraction", args.holdout_fraction)) if value is not None]
    if sgd_only and not args.sgd:
        raise UsageError(f"{', '.join(sgd_only)} go with --sgd")
    if args.sgd:
        if args.calibrate:
            raise UsageError("--calibrate is not available with --sgd (use --classifier logreg for probabilities)")
        args.l1_ratio = 0.15 if args.l1_ratio is None else args.l1_ratio
        args.epochs = 5 if args.epochs is None else args.epochs
        args.chunk_size = 4096 if args.chunk_size is None else args.chunk_size
        args.holdout_fraction = 0.2 if args.holdout_fraction is None else args.holdout_fraction
        return cmd_train_sgd(args)
    report = train_store(args.store, args.out, classifier=args.classifier, penalty=args.penalty, cv=args.cv,
                         class_weight=args.class_weight, calibrate=args.calibrate, n_jobs=args.n_jobs,
                         random_state=args.seed)
    if args.json:
        _print_json(report.to_dict())
        return EXIT_OK
    if report.random_weights:
        print("WARNING: this store's features come from RANDOM weights (--weights none)")
    print(f"trained on {report.n_train} images of the train split, {len(report.label_names)} classes, "
          f"C chosen by {args.cv}-fold stratified CV ({report.seconds:.1f} s)")
    print(format_table(report.candidates, ["classifier", "penalty", "best_C", "cv_score_mean", "cv_score_std",
                                           "n_nonzero_weights", "fit_seconds"]))
    print(f"kept {report.name} (best CV accuracy) → {report.model_path}")
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from featx.classify import trained_model
    from featx.metrics import format_report, save_confusion_png

    model = trained_model(args.model, allow_unsafe=args.allow_unsafe_model)
    result = model.evaluate(args.store, split=args.split, batch_size=args.batch_size, workers=args.workers)
    for s in result.get("skipped", ()):  # images a fine-tuned model could not read (a store has none to report)
        print(f"skipped ({s['kind']}): {s['path']}: {s['reason']}", file=sys.stderr)
    png = args.confusion_png or str(Path(args.model).with_suffix("")) + f".{args.split}.confusion.png"
    save_confusion_png(result, png, title=f"{result['model_name']} on {args.split}")
    result["confusion_png"] = png
    if args.json:
        _print_json(result)
    else:
        if result["random_weights"]:
            print("WARNING: features come from RANDOM weights (--weights none)")
        print(format_report(result, title=f"{result['model_name']} ({result['backbone']}) on the "
                                          f"{args.split} split of {args.store}"))
        print(f"confusion matrix → {png}")
    return EXIT_OK


def cmd_predict(args) -> int:
    from featx.classify import trained_model

    model = trained_model(args.model, allow_unsafe=args.allow_unsafe_model)
    out = model.predict_images(args.images, weights=args.weights, batch_size=args.batch_size, workers=args.workers)
    if args.json:
        _print_json(out)
        return EXIT_OK
    if out["random_weights"]:
        print("WARNING: features come from RANDOM weights")
    for p in out["predictions"]:
        conf = f"  {p['confidence']:.3f}" if "confidence" in p else ""
        print(f"{p['label']}{conf}  {p['path']}")
    for s in out["skipped"]:
        print(f"skipped ({s['kind']}): {s['path']}: {s['reason']}", file=sys.stderr)
    return EXIT_OK


def cmd_info(args) -> int:
    from featx.store import FeatureStore

    with FeatureStore(args.store) as store:
        info = store.info()
        verify = store.verify() if args.verify else None
    if verify is not None:
        info["verify"] = verify
    if args.json:
        _print_json(info)
        return EXIT_OK if verify is None or verify["ok"] else EXIT_FAILURE
    fp = info["fingerprint"]
    print(f"store        {info['path']}")
    print(f"backbone     {fp['backbone']} ({fp['weights']} weights, sha256 {fp['weights_sha256'][:16]}…)"
          + ("  [RANDOM WEIGHTS]" if info["random_weights"] else ""))
    print(f"input        {fp['image_size'][0]}×{fp['image_size'][1]}, preprocessing {fp['preprocessing']}, "
          f"pooling {fp['pooling']}, layer {fp['layer'] or '(last conv block)'}")
    print(f"features     {info['n_images']} × {info['feature_dim']} {info['feature_dtype']}  "
          f"(fingerprint {info['fingerprint_id']})")
    print(f"splits       {info['splits']}   split method {info['split_method'] or '-'}")
    print(f"classes      {info['labels']}")
    print(f"skipped      {info['n_skipped']} {info['skipped_by_kind'] or ''}")
    for s in info["skipped"][:20]:
        print(f"  - {s['path']}: {s['kind']}: {s['reason']}")
    if info["pending_journal_parts"]:
        print(f"journal      {info['pending_journal_parts']} parts from an interrupted run (included here; "
              "the next extract merges them)")
    for c in info["label_conflicts"]:
        print(f"WARNING      identical content under labels {c['labels']}: {', '.join(c['paths'])}")
    print(f"root         {info['root']}")
    print(f"made with    {info['versions']}")
    if verify is not None:
        # exit 1 unless verified: a tampered store, or one without a checksum, is not known to be intact
        print(f"verify       {verify['message']}  ({verify['seconds']:.2f} s)")
        return EXIT_OK if verify["ok"] else EXIT_FAILURE
    return EXIT_OK


def cmd_backbones(args) -> int:
    from featx.backbones import describe_backbones
    from featx.metrics import format_table

    from featx.backbones import keras_cache_dir
    from featx.download import offline_mode, weights_mirror

    rows = describe_backbones()
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for row in rows:
        row["name"] = row["name"] + (" (default)" if row["default"] else "")
        row["download"] = "-" if row["weights"] in ("cached", "vendored") else f"{row['download_mb']:.1f} MB"
    print(format_table(rows, ["name", "keras_application", "input_size", "feature_dim", "preprocessing", "weights",
                              "download"]))
    source = weights_mirror() or "keras.applications' address"
    print(f"weights: vendored = ships with featx (never downloads); cached = in the Keras cache ({keras_cache_dir()}); "
          + ("missing = not cached, and offline mode is on (FEATX_OFFLINE / --offline)" if offline_mode()
             else f"download = fetched on first use from {source} (about the size shown), verified, then cached"))
    return EXIT_OK


def cmd_finetune(args) -> int:
    from featx.finetune import finetune

    result = finetune(
        args.data, args.out, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
        epochs=args.epochs, unfreeze=args.unfreeze, lr=args.lr, head_init=args.head_init,
        head_epochs=args.head_epochs, head_lr=args.head_lr, augment=args.augment, batch_size=args.batch_size,
        mixed_precision=args.mixed_precision, dropout=args.dropout, l2=args.l2, class_weight=args.class_weight,
        monitor=args.monitor, monitor_fraction=args.monitor_fraction, patience=args.patience, store=args.store,
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
        split_seed=args.split_seed, seed=args.seed, workers=args.workers, allow_outside_root=args.allow_outside_root,
    )
    _print_json(result.to_dict()) if args.json else print(result.format())
    return EXIT_OK


def cmd_compare(args) -> int:
    from featx.compare import compare

    result = compare(
        args.data, args.out, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
        split=args.split, batch_size=args.batch_size, workers=args.workers, cv=args.cv, n_jobs=args.n_jobs,
        epochs=args.epochs, unfreeze=args.unfreeze, lr=args.lr, augment=args.augment,
        mixed_precision=args.mixed_precision, patience=args.patience, validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction, split_seed=args.split_seed, seed=args.seed,
        allow_outside_root=args.allow_outside_root, progress=not args.no_progress,
    )
    if args.json:
        _print_json({"files": result.files, "verdict": result.verdict})
        return EXIT_OK
    print(result.verdict.get("text", ""))
    for kind, path in result.files.items():
        print(f"report ({kind}) → {path}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from featx.demo import run_demo

    return run_demo(workdir=args.workdir, progress=not args.no_progress)


# -- parser ----------------------------------------------------------------------------------------
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


def _add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    from featx.backbones import DEFAULT_BACKBONE

    """Arguments shared by `finetune` and `compare`."""
    p.add_argument("data", help="folder of class folders (optionally under train/ validation/ test/), or a CSV")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"registry name (default: {DEFAULT_BACKBONE}; see `featx backbones`; "
                        "mobilenet_0.25 ships with featx and never downloads)")
    p.add_argument("--weights", default="imagenet", help=WEIGHTS_HELP)
    _add_offline(p)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs at most (early stopping)")
    p.add_argument("--unfreeze", default="2", help="top blocks to train, or 'all' (default 2)")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (Adam; default 1e-4)")
    p.add_argument("--augment", default=",".join(DEFAULT_AUGMENT_NAMES),
                   help="comma list of flip,rotate,zoom,shear,translate,contrast or none")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--mixed-precision", nargs="?", const="auto", default=False, choices=["auto", "float16", "bfloat16"],
                   help="train in mixed precision (auto: float16 on a GPU, bfloat16 on CPU)")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs")
    p.add_argument("--workers", type=int, default=None, help="decoding threads")
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-outside-root", action="store_true")


# featx.finetune.DEFAULT_AUGMENT, repeated so that `featx --help` does not import Keras
DEFAULT_AUGMENT_NAMES = ("flip", "rotate", "zoom", "contrast")


def _seconds(text: str) -> float:
    """argparse type for a duration: seconds >= 0 (argparse turns the error into exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


OFFLINE_HELP = ("never touch the network: ImageNet weights missing from the Keras cache are an error, not a "
                "download (also FEATX_OFFLINE=1)")
WEIGHTS_HELP = ("imagenet (default): the Keras cache ($KERAS_HOME/models), else downloaded there on first use "
                "from keras.applications' address or FEATX_WEIGHTS_MIRROR; a weights file path; or none (random)")


def _add_offline(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: the subcommand's flag must not reset a global `featx --offline` to False
    p.add_argument("--offline", action="store_true", default=argparse.SUPPRESS, help=OFFLINE_HELP)


def build_parser() -> argparse.ArgumentParser:
    from featx import __version__
    from featx.backbones import DEFAULT_BACKBONE

    parser = argparse.ArgumentParser(
        prog="featx",
        description="Transfer learning on images: extract pretrained-CNN features into an HDF5 store once, "
                    "then train and evaluate linear classifiers on them in seconds.",
    )
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--offline", action="store_true", default=False, help=OFFLINE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("extract", help="extract features of an image set into a store",
                       description="Extract features of an image set into an HDF5 store (resumable: images "
                                   "already in the store are not recomputed). Example: featx extract "
                                   "data/cats_dogs --store cache/cd.h5 --backbone mobilenet_0.25")
    p.add_argument("data", help="folder of class folders (optionally under train/ validation/ test/), "
                                "or a CSV manifest path,label[,split]")
    p.add_argument("--store", required=True, help="the HDF5 store to create or extend")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"registry name (default: {DEFAULT_BACKBONE}; see `featx backbones`; "
                        "mobilenet_0.25 ships with featx and never downloads)")
    p.add_argument("--weights", default="imagenet", help=WEIGHTS_HELP)
    _add_offline(p)
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="images per model call, or auto (default): the largest power of two whose activations "
                        "fit a share of the free memory, at most 64 on a CPU and 512 on a GPU; halved on "
                        "out-of-memory either way")
    p.add_argument("--image-size", type=int, default=None, help="square input size (default: the backbone's)")
    p.add_argument("--pooling", choices=["avg", "max"], default="avg")
    p.add_argument("--layer", default=None, help="take features from this named layer instead")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="what the model computes in (16 bits: faster on GPUs, features differ by round-off; "
                        "recorded in the store's fingerprint)")
    p.add_argument("--decoder", choices=["cpu", "gpu", "auto"], default="cpu",
                   help="JPEG decoder: cpu (default), gpu (torchvision nvJPEG; an error if it cannot run) or "
                        "auto (gpu when usable; the summary says which ran)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding threads (default: one per core, up to two per core while the model waits)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="gpu fails unless a GPU is usable; auto uses one when present")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="for sets without split folders: stratified fraction held out (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept manifest paths outside the manifest's folder")
    p.add_argument("--prune", action="store_true", help="drop store rows of files no longer in the set")
    p.add_argument("--image-timeout", type=_seconds, default=60.0, metavar="S",
                   help="skip (as 'timeout') an image not read and decoded within S seconds (default 60; 0: no limit)")
    p.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT",
                   help="extract on Dask workers: local (a cluster on this machine, one worker per GPU or core), "
                        "local:N, or a scheduler address; shards are merged into --store (needs featx[dask])")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="with --cluster: shards to split the work into (default: one per worker, up to 4 per worker "
                        "for big sets; an unfinished run's count to resume it)")
    p.add_argument("--keep-shards", action="store_true", help="with --cluster: keep STORE.shards/ after merging")
    p.add_argument("--shard", default=None, metavar="i/N",
                   help="extract only shard i of N (counted from 0) into STORE.shards/ (no Dask; e.g. a Slurm array "
                        "job); join with `featx merge STORE`")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("merge", help="join shard stores into one store",
                       description="Append the rows and skipped files of shard stores (from `featx extract --shard "
                                   "i/N`) to STORE through its journal; refuses shards of another backbone "
                                   "configuration or dtype; merging twice adds nothing. Example: featx merge "
                                   "cache/cd.h5   (all of cache/cd.h5.shards/shard-*.h5)")
    p.add_argument("store", help="the store to create or extend")
    p.add_argument("shards", nargs="*", metavar="SHARD", help="shard stores (default: every STORE.shards/shard-*.h5)")
    p.add_argument("--delete-shards", action="store_true", help="delete the shard stores once merged")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("train", help="train linear classifiers on a store's train split",
                       description="Train logistic regression / linear SVM (L1 or L2) on the train split; "
                                   "C by stratified k-fold CV. Example: featx train cache/cd.h5 --out "
                                   "cache/cd.skops --classifier all --penalty all")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="classifier file to write (.skops)")
    p.add_argument("--classifier", choices=["logreg", "svm", "all"], default="logreg")
    p.add_argument("--penalty", choices=["l1", "l2", "elasticnet", "all"], default="l2",
                   help="elasticnet needs --sgd (all: l1, l2 and, with --sgd, elasticnet)")
    p.add_argument("--cv", type=int, default=5, help="folds for choosing C (default 5)")
    p.add_argument("--class-weight", choices=["balanced"], default=None)
    p.add_argument("--calibrate", action="store_true", help="calibrated probabilities for the SVM")
    p.add_argument("--n-jobs", type=int, default=-1, help="parallel CV fits (default -1: all cores)")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT",
                   help="with --sgd: run the candidates on Dask workers (joblib's dask backend; needs featx[dask])")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

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
    p.add_argument("--allow-unsafe-model", action="store_true",
                   help="load a .keras model even if it holds Lambda layers (runs their code: trusted files only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images with a saved classifier",
                       description="Extract with the classifier's recorded backbone and predict. "
                                   "Example: featx predict cache/cd.skops photo.jpg more_photos/ --json")
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", default=None, help="the weights file, if the backbone used one")
    _add_offline(p)
    p.add_argument("--allow-unsafe-model", action="store_true",
                   help="load a .keras model even if it holds Lambda layers (runs their code: trusted files only)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="what is in a store", description="Example: featx info cache/cd.h5 --json")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true",
                   help="recompute the checksums recorded when the store was written; exit 1 unless they match")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("backbones", help="list the backbone registry",
                       description="Every backbone with input size, feature width and where its ImageNet "
                                   "weights come from: vendored with featx, cached in $KERAS_HOME/models, or "
                                   "downloaded on first use (with the download's size). Example: featx backbones --json")
    p.add_argument("--json", action="store_true")
    _add_offline(p)
    p.set_defaults(func=cmd_backbones)

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
    p.add_argument("--head-init", choices=["probe", "random"], default="probe",
                   help="probe (LP-FT, default) or a random head trained first for --head-epochs")
    p.add_argument("--head-epochs", type=int, default=None, help="phase-one epochs (default 0 with probe, 5 random)")
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--l2", type=float, default=1e-4, help="L2 weight decay on the head")
    p.add_argument("--class-weight", choices=["balanced"], default=None)
    p.add_argument("--monitor", choices=["val_loss", "val_accuracy"], default="val_loss")
    p.add_argument("--monitor-fraction", type=float, default=0.1,
                   help="stratified part of the train split held out for early stopping (default 0.1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune)

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
    p.add_argument("--cv", type=int, default=5, help="folds for choosing C (default 5)")
    p.add_argument("--n-jobs", type=int, default=-1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="offline end-to-end demo on scikit-learn's digits",
                       description="Writes scikit-learn's bundled digits as PNG class folders, then runs "
                                   "extract → train (LR and SVM, L1 and L2) → evaluate with the vendored "
                                   "mobilenet_0.25 backbone. Example: featx demo")
    p.add_argument("--workdir", default="cache/demo")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    from featx.audit.cli import add_parser as add_audit_parser  # issue 17: featx audit

    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_backend_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="featx: %(message)s", stream=sys.stderr)
    if args.offline:  # through the environment, so local Dask workers and every command path see it
        import os

        os.environ["FEATX_OFFLINE"] = "1"
    from featx.backbones import UnknownBackbone, WeightsUnavailable
    from featx.errors import InputNotFound
    from featx.sources import SourceError
    from featx.store import StoreError

    try:
        return args.func(args)
    except (UsageError, UnknownBackbone, SourceError, InputNotFound) as exc:
        # the command cannot be carried out as given: a bad argument, or a path that is not there
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
    except (WeightsUnavailable, StoreError, ValueError, OSError, RuntimeError) as exc:
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # store, model-file and fingerprint errors all land here with their message
        if args.verbose:
            raise
        print(f"featx {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
