"""The `featx` commands: each ``cmd_*`` turns parsed arguments into one library call and prints its result.

Imports of the library happen inside each command, so a command that needs no CNN (info, train,
evaluate of a .skops classifier, backbones) never imports Keras or its backend.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from featx.config import BackboneConfig, SplitConfig

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# the argparse dest of each BackboneConfig field (a command has some of them: finetune has no --pooling)
_BACKBONE_DESTS = {"name": "backbone", "weights": "weights", "image_size": "image_size", "pooling": "pooling",
                   "layer": "layer", "precision": "precision", "views": "views", "layers": "layers"}


class UsageError(Exception):
    """Bad arguments found after parsing (exit code 2)."""


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _backbone_config(args: argparse.Namespace) -> BackboneConfig:
    """The backbone options of a command as one BackboneConfig (offline travels by the environment)."""
    return BackboneConfig(**{field: getattr(args, dest) for field, dest in _BACKBONE_DESTS.items()
                             if hasattr(args, dest)})


def _split_config(args: argparse.Namespace) -> SplitConfig:
    return SplitConfig(validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                       seed=args.split_seed)


def _library_keywords(backbone: BackboneConfig, split: SplitConfig, fields=tuple(_BACKBONE_DESTS)) -> dict:
    """The configs as the keyword arguments of extract / finetune / compare (`fields`: those it takes)."""
    settings = {_BACKBONE_DESTS[f]: getattr(backbone, f) for f in fields}
    return {**settings, "validation_fraction": split.validation_fraction, "test_fraction": split.test_fraction,
            "split_seed": split.seed}


def _parse_or_usage(parse, text: str):
    """A --cluster / --shard value parsed by the library; its ValueError is a usage error (exit 2)."""
    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_extract_args(args: argparse.Namespace) -> None:
    if args.cluster and args.shard:
        raise UsageError("--cluster and --shard exclude each other (--shard is for schedulers without Dask)")
    if (args.shards is not None or args.keep_shards) and not args.cluster:
        raise UsageError("--shards and --keep-shards go with --cluster")
    if args.shard and args.prune:
        raise UsageError("--prune with --shard would drop the other shards' images; prune in a run without --shard")


def cmd_extract(args: argparse.Namespace) -> int:
    from featx.extract import ExtractionInterrupted, extract

    _check_extract_args(args)
    split = _split_config(args)
    options = dict(  # the backbone as its config: views and layers travel to Dask workers with it
        backbone=_backbone_config(args), validation_fraction=split.validation_fraction,
        test_fraction=split.test_fraction, split_seed=split.seed, batch_size=args.batch_size, dtype=args.dtype,
        decoder=args.decoder, workers=args.workers, device=args.device, allow_outside_root=args.allow_outside_root,
        progress=not args.no_progress, image_timeout=args.image_timeout or None,
    )
    try:
        if args.cluster:
            from featx.distributed import extract_distributed, parse_cluster

            summary = extract_distributed(args.data, args.store, cluster=_parse_or_usage(parse_cluster, args.cluster),
                                          n_shards=args.shards, keep_shards=args.keep_shards, prune=args.prune,
                                          **options)
        elif args.shard:
            from featx.distributed import extract_shard, parse_shard

            summary = extract_shard(args.data, args.store, _parse_or_usage(parse_shard, args.shard), **options)
        else:
            summary = extract(args.data, args.store, prune=args.prune, **options)
    except ExtractionInterrupted as exc:
        print(exc.summary.format(), file=sys.stderr)
        return 130
    _print_json(summary.to_dict()) if args.json else print(summary.format())
    return EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from featx.distributed import merge

    report = merge(args.store, args.shards or None, remove=args.delete_shards)
    _print_json(report.to_dict()) if args.json else print(report.format())
    return EXIT_OK


def _check_train_args(args: argparse.Namespace) -> None:
    if args.cluster and not args.sgd:
        raise UsageError("--cluster trains with --sgd (the out-of-core search); in-memory training uses --n-jobs")
    if args.penalty == "elasticnet" and not args.sgd:
        raise UsageError("--penalty elasticnet needs --sgd")
    sgd_only = [flag for flag, value in (("--alpha", args.alpha), ("--l1-ratio", args.l1_ratio),
                                          ("--epochs", args.epochs), ("--chunk-size", args.chunk_size),
                                          ("--holdout-fraction", args.holdout_fraction)) if value is not None]
    if sgd_only and not args.sgd:
        raise UsageError(f"{', '.join(sgd_only)} go with --sgd")
    if args.features is not None and args.sgd:
        raise UsageError("--features goes with in-memory training, not --sgd")
    if args.sgd and args.calibrate:
        raise UsageError("--calibrate is not available with --sgd (use --classifier logreg for probabilities)")


def _print_train_report(report, selection: str, columns: list[str], kept: str) -> None:
    from featx.metrics import format_table

    if report.random_weights:
        print("WARNING: this store's features come from RANDOM weights (--weights none)")
    print(f"trained {selection} ({report.seconds:.1f} s)")
    print(format_table(report.candidates, columns))
    print(f"kept {report.name}{kept} → {report.model_path}")


def cmd_train_sgd(args: argparse.Namespace) -> int:
    from featx.linear.store_training import train_store_sgd

    # the SGD options left out take train_store_sgd's own defaults (the help text states them)
    defaults = inspect.signature(train_store_sgd).parameters
    for name in ("l1_ratio", "epochs", "chunk_size", "holdout_fraction"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name].default)
    report = train_store_sgd(
        args.store, args.out, classifier=args.classifier, penalty=args.penalty, alphas=args.alpha,
        l1_ratio=args.l1_ratio, epochs=args.epochs, chunk_size=args.chunk_size,
        holdout_fraction=args.holdout_fraction, class_weight=args.class_weight, random_state=args.seed,
        cluster=args.cluster, n_jobs=args.n_jobs,
    )
    if args.json:
        _print_json(report.to_dict())
        return EXIT_OK
    _print_train_report(
        report, f"by chunked SGD on {report.n_train} images of the train split, {len(report.label_names)} classes; "
                f"alpha chosen on a held-out {args.holdout_fraction:g} of that split"
                + (f", candidates run on {args.cluster}" if args.cluster else ""),
        ["loss", "penalty", "alpha", "holdout_accuracy", "fit_seconds", "host"], "")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    _check_train_args(args)
    if args.sgd:
        return cmd_train_sgd(args)
    from featx.classify import train_store

    report = train_store(args.store, args.out, classifier=args.classifier, penalty=args.penalty, cv=args.cv,
                         class_weight=args.class_weight, calibrate=args.calibrate, n_jobs=args.n_jobs,
                         random_state=args.seed, features=args.features)
    if args.json:
        _print_json(report.to_dict())
        return EXIT_OK
    _print_train_report(
        report, f"on {report.n_train} images of the train split, {len(report.label_names)} classes, "
                f"C chosen by {args.cv}-fold stratified CV",
        ["classifier", "penalty", "best_C", "cv_score_mean", "cv_score_std", "n_nonzero_weights", "fit_seconds"],
        " (best CV accuracy)")
    if report.features != "all" or report.feature_scores:
        print(_feature_scores_text(report))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
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
        return EXIT_OK
    if result["random_weights"]:
        print("WARNING: features come from RANDOM weights (--weights none)")
    print(format_report(result, title=f"{result['model_name']} ({result['backbone']}) on the "
                                      f"{args.split} split of {args.store}"))
    print(f"confusion matrix → {png}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
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


def _print_store_info(info: dict) -> None:
    fp = info["fingerprint"]
    print(f"store        {info['path']}")
    print(f"backbone     {fp['backbone']} ({fp['weights']} weights, sha256 {fp['weights_sha256'][:16]}…)"
          + ("  [RANDOM WEIGHTS]" if info["random_weights"] else ""))
    print(f"input        {fp['image_size'][0]}×{fp['image_size'][1]}, preprocessing {fp['preprocessing']}, "
          f"pooling {fp['pooling']}, layer {fp['layer'] or '(last conv block)'}")
    print(f"features     {info['n_images']} × {info['feature_dim']} {info['feature_dtype']}  "
          f"(fingerprint {info['fingerprint_id']})")
    sets = ", ".join(f"{name} [{a}:{b}]" for name, (a, b) in info["feature_sets"].items())
    print(f"sets         {sets}; views {info['views']}")
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


def cmd_info(args: argparse.Namespace) -> int:
    from featx.store import FeatureStore

    with FeatureStore(args.store) as store:
        info = store.info()
        verify = store.verify() if args.verify else None
    if verify is not None:
        info["verify"] = verify
    # exit 1 unless verified: a tampered store, or one without a checksum, is not known to be intact
    code = EXIT_OK if verify is None or verify["ok"] else EXIT_FAILURE
    if args.json:
        _print_json(info)
        return code
    _print_store_info(info)
    if verify is not None:
        print(f"verify       {verify['message']}  ({verify['seconds']:.2f} s)")
    return code


def cmd_backbones(args: argparse.Namespace) -> int:
    from featx.backbones import describe_backbones, keras_cache_dir
    from featx.download import offline_mode, weights_mirror
    from featx.metrics import format_table

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


def _finetune_keywords(args: argparse.Namespace) -> dict:
    """Options `featx finetune` and `featx compare` share (the fine-tuning half of a comparison)."""
    return dict(
        **_library_keywords(_backbone_config(args), _split_config(args), fields=("name", "weights", "image_size")),
        epochs=args.epochs, unfreeze=args.unfreeze, lr=args.lr, augment=args.augment, batch_size=args.batch_size,
        mixed_precision=args.mixed_precision, patience=args.patience, workers=args.workers, seed=args.seed,
        allow_outside_root=args.allow_outside_root,
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    from featx.finetune import finetune

    result = finetune(
        args.data, args.out, **_finetune_keywords(args), head_init=args.head_init, head_epochs=args.head_epochs,
        head_lr=args.head_lr, dropout=args.dropout, l2=args.l2, class_weight=args.class_weight,
        monitor=args.monitor, monitor_fraction=args.monitor_fraction, store=args.store,
    )
    _print_json(result.to_dict()) if args.json else print(result.format())
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from featx.compare import compare

    result = compare(args.data, args.out, **_finetune_keywords(args), split=args.split, views=args.views,
                     cv=args.cv, n_jobs=args.n_jobs, progress=not args.no_progress)
    if args.json:
        _print_json({"files": result.files, "verdict": result.verdict})
        return EXIT_OK
    print(result.verdict.get("headline", ""))  # the decision: significant, not, or too few images
    print(result.verdict.get("text", ""))
    for kind, path in result.files.items():
        print(f"report ({kind}) → {path}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from featx.demo import run_demo

    return run_demo(workdir=args.workdir, progress=not args.no_progress)


def _feature_scores_text(report) -> str:
    """`featx train --features best`: each feature set's CV score, and the one kept."""
    from featx.featuresets import ALL
    from featx.metrics import format_table

    if not report.feature_scores:
        return f"features: {report.features}" if report.features != ALL else ""
    table = format_table(report.feature_scores, ["features", "n_features", "name", "cv_score_mean", "cv_score_std"])
    return f"{table}\nkept feature set {report.features} (best CV accuracy)"


def cmd_tune(args: argparse.Namespace) -> int:
    from featx.tune import tune

    split = _split_config(args)
    result = tune(args.data, args.out, backbone=args.backbone, weights=args.weights, sizes=args.sizes,
                  views=args.views, layers=args.layers or None, budget=args.budget, max_recipes=args.max_recipes,
                  cv=args.cv, classifier=args.classifier, split=args.split, batch_size=args.batch_size,
                  workers=args.workers, validation_fraction=split.validation_fraction,
                  test_fraction=split.test_fraction, split_seed=split.seed, n_jobs=args.n_jobs,
                  progress=not args.no_progress)
    _print_json(result.to_dict()) if args.json else print(result.format())
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """Findings are not failures: 0 when the audit ran (featx.errors: 1 a store that cannot be audited)."""
    from featx.audit import audit
    from featx.audit.html import write_audit
    from featx.audit.manifest import write_manifest

    result = audit(args.store, cv=args.cv, near_threshold=args.near_threshold, similarity=args.similarity,
                   outlier_z=args.outlier_z, neighbours=args.neighbours)
    written = [str(p) for p in write_audit(result, args.out).values()] if args.out else []
    if args.fix_manifest:
        kept, dropped = write_manifest(result, args.fix_manifest)
        written.append(f"{args.fix_manifest} ({kept} rows, {dropped} leaked copies left out)")
    if args.json:
        _print_json(result.to_dict())
        return EXIT_OK
    print(result.format(top=args.top))
    for w in written:
        print(f"wrote        {w}")
    return EXIT_OK
