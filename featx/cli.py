"""The `featx` command line: argument parsing and printing only; every command calls the library.

Exit codes: 0 success (skipped files are allowed and reported), 1 failure, 2 usage error.
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

    weights = args.weights
    try:
        summary = extract(
            args.data, args.store, backbone=args.backbone, weights=weights, image_size=args.image_size,
            pooling=args.pooling, layer=args.layer, batch_size=args.batch_size, dtype=args.dtype,
            workers=args.workers, device=args.device, validation_fraction=args.validation_fraction,
            test_fraction=args.test_fraction, split_seed=args.split_seed,
            allow_outside_root=args.allow_outside_root, prune=args.prune, progress=not args.no_progress,
        )
    except ExtractionInterrupted as exc:
        print(exc.summary.format(), file=sys.stderr)
        return 130
    _print_json(summary.to_dict()) if args.json else print(summary.format())
    return EXIT_OK


def cmd_train(args) -> int:
    from featx.classify import train_store
    from featx.metrics import format_table

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
    from featx.classify import evaluate_store
    from featx.metrics import format_report, save_confusion_png

    result = evaluate_store(args.model, args.store, split=args.split)
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
    from featx.classify import predict_images

    out = predict_images(args.model, args.images, weights=args.weights, batch_size=args.batch_size,
                         workers=args.workers)
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
    if args.json:
        _print_json(info)
        return EXIT_OK
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
    return EXIT_OK


def cmd_backbones(args) -> int:
    from featx.backbones import describe_backbones
    from featx.metrics import format_table

    rows = describe_backbones()
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for row in rows:
        row["offline"] = "yes" if row["imagenet_offline"] else "no"
        row["name"] = row["name"] + (" (default)" if row["default"] else "")
    print(format_table(rows, ["name", "keras_application", "input_size", "feature_dim", "preprocessing", "offline"]))
    print("offline = ImageNet weights found in the Keras cache ($KERAS_HOME/models) or vendored with featx")
    return EXIT_OK


def cmd_demo(args) -> int:
    from featx.demo import run_demo

    return run_demo(workdir=args.workdir, progress=not args.no_progress)


# -- parser ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from featx import __version__

    parser = argparse.ArgumentParser(
        prog="featx",
        description="Transfer learning on images: extract pretrained-CNN features into an HDF5 store once, "
                    "then train and evaluate linear classifiers on them in seconds.",
    )
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("extract", help="extract features of an image set into a store",
                       description="Extract features of an image set into an HDF5 store (resumable: images "
                                   "already in the store are not recomputed). Example: featx extract "
                                   "data/cats_dogs --store cache/cd.h5 --backbone mobilenet_0.25")
    p.add_argument("data", help="folder of class folders (optionally under train/ validation/ test/), "
                                "or a CSV manifest path,label[,split]")
    p.add_argument("--store", required=True, help="the HDF5 store to create or extend")
    p.add_argument("--backbone", default="efficientnetb0", help="registry name (see `featx backbones`)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (offline, from $KERAS_HOME/models), a weights file path, or none (random)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=None, help="square input size (default: the backbone's)")
    p.add_argument("--pooling", choices=["avg", "max"], default="avg")
    p.add_argument("--layer", default=None, help="take features from this named layer instead")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU cores)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="gpu fails unless a GPU is usable; auto uses one when present")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="for sets without split folders: stratified fraction held out (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept manifest paths outside the manifest's folder")
    p.add_argument("--prune", action="store_true", help="drop store rows of files no longer in the set")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="train linear classifiers on a store's train split",
                       description="Train logistic regression / linear SVM (L1 or L2) on the train split; "
                                   "C by stratified k-fold CV. Example: featx train cache/cd.h5 --out "
                                   "cache/cd.skops --classifier all --penalty all")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="classifier file to write (.skops)")
    p.add_argument("--classifier", choices=["logreg", "svm", "all"], default="logreg")
    p.add_argument("--penalty", choices=["l1", "l2", "all"], default="l2")
    p.add_argument("--cv", type=int, default=5, help="folds for choosing C (default 5)")
    p.add_argument("--class-weight", choices=["balanced"], default=None)
    p.add_argument("--calibrate", action="store_true", help="calibrated probabilities for the SVM")
    p.add_argument("--n-jobs", type=int, default=-1, help="parallel CV fits (default -1: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a classifier on a held-out split",
                       description="Accuracy, precision, recall, F1, confusion matrix (and ROC-AUC when "
                                   "binary) on a split never used for selection. Example: featx evaluate "
                                   "cache/cd.skops cache/cd.h5 --split validation --json")
    p.add_argument("model")
    p.add_argument("store")
    p.add_argument("--split", choices=["validation", "test"], default="validation")
    p.add_argument("--confusion-png", default=None, help="where to write the confusion matrix PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images with a saved classifier",
                       description="Extract with the classifier's recorded backbone and predict. "
                                   "Example: featx predict cache/cd.skops photo.jpg more_photos/ --json")
    p.add_argument("model")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--weights", default=None, help="the weights file, if the backbone used one")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="what is in a store", description="Example: featx info cache/cd.h5 --json")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("backbones", help="list the backbone registry",
                       description="Every backbone with input size, feature width and whether its ImageNet "
                                   "weights are available offline. Example: featx backbones --json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("demo", help="offline end-to-end demo on scikit-learn's digits",
                       description="Writes scikit-learn's bundled digits as PNG class folders, then runs "
                                   "extract → train (LR and SVM, L1 and L2) → evaluate with the vendored "
                                   "mobilenet_0.25 backbone. Example: featx demo")
    p.add_argument("--workdir", default="cache/demo")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_backend_logs()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="featx: %(message)s", stream=sys.stderr)
    from featx.backbones import UnknownBackbone, WeightsUnavailable
    from featx.sources import SourceError

    try:
        return args.func(args)
    except (UsageError, UnknownBackbone, SourceError) as exc:
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("featx: interrupted", file=sys.stderr)
        return 130
    except (WeightsUnavailable, ValueError, OSError, RuntimeError) as exc:
        print(f"featx {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # store, model-file and fingerprint errors all land here with their message
        if args.verbose:
            raise
        print(f"featx {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
