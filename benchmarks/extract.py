"""Extraction throughput, measured side by side in one run on the same files.

    python benchmarks/extract.py DATA [--backbone mobilenet_0.25] [--n 600] [--batch-size 64]

(a) decode-only ceiling: featx's reader alone on all cores (threads)
(b) model-only ceiling: the backbone on a resident uint8 batch (compiled predict step)
(c) featx end to end: `featx.extract` into a fresh store
(d) keras.utils.image_dataset_from_directory + preprocess_input + predict  (TensorFlow backend only)
(e) legacy ImageDataGenerator(preprocessing_function=preprocess_input).flow_from_directory + predict
(d) and (e) use the stock keras.applications network with the same weights, as Keras users do
(benchmarks/keras_ways.py). They run twice: in this process, so they share featx's TensorFlow settings
(featx turns oneDNN on at import), and in a fresh process that never imports featx, which is how
users run them today ("TF defaults"; --no-fresh skips it). With TF_ENABLE_ONEDNN_OPTS=0 everything
runs on TensorFlow's default kernels.

The fresh process also times the stock network alone on a resident batch ("stock_model"): b over it
is how much faster featx's model is, which is what c/d (TF defaults) comes to when both pipelines are
model-bound and equally efficient.

--configs DECODER/PRECISION,... runs (c) once per configuration, e.g. cpu/float32,gpu/float32,gpu/bfloat16
(--decoder of featx extract: cpu, gpu or auto; --precision: float32, bfloat16, float16); (b) is measured
once per precision. Results of the default configuration cpu/float32 keep their keys (c_featx, b_model);
others are suffixed, e.g. c_featx[gpu/bfloat16], b_model[bfloat16].

Prints images/s for each and the ratios c/d, c/e, c/min(a, b); writes everything to --json.
DATA is a folder of class folders; the first N image files (sorted) are used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

_user_onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
import featx  # noqa: E402,F401  (before TensorFlow loads: featx picks its CPU kernels at import)
import keras_ways  # noqa: E402  (this folder's module: (d) and (e), the Keras ways)

# What featx set at import (None when the user had set it): the fresh-process (d) and (e) runs
# get the user's environment back, without it.
featx_onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS") if _user_onednn is None else None


def pick_files(data: str, n: int) -> list[tuple[str, str]]:
    from featx.sources import from_directory

    items = from_directory(data).items
    if len(items) < n:
        print(f"note: only {len(items)} images in {data}; using all", file=sys.stderr)
    return [(it.path, it.label or "x") for it in items[:n]]


def linked_tree(files: list[tuple[str, str]], root: Path) -> Path:
    """The chosen files as a class-folder tree of symlinks (for the Keras loaders)."""
    for i, (path, label) in enumerate(files):
        dest = root / label / f"{i:06d}{Path(path).suffix.lower()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(path), dest)
    return root


def bench_decode(files, size, workers) -> float:
    from featx.decode import decode_file
    from featx.pipeline import ordered_map

    start = time.perf_counter()
    n = sum(1 for d in ordered_map(lambda p: decode_file(p, size), [f for f, _ in files], workers=workers,
                                   window=8 * workers, max_workers=2 * workers) if d.pixels is not None)
    return n / (time.perf_counter() - start)


def bench_model(backbone, batch_size, seconds=5.0) -> float:
    import keras

    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).integers(0, 256, (batch_size, *backbone.image_size, 3), dtype=np.uint8))
    model = backbone.inference_model  # what featx.extract runs
    np.asarray(model.predict_on_batch(x))  # compile
    return keras_ways.predict_on_batch_rate(model, x, seconds)


def bench_featx(files, backbone, batch_size, workers, store: Path, decoder: str = "cpu") -> tuple[float, dict]:
    from featx.extract import extract
    from featx.sources import ImageSet, Item

    backbone.predict(np.zeros((batch_size, *backbone.image_size, 3), np.uint8))  # built and traced, like d, e
    image_set = ImageSet([Item(p, f"{i:06d}", label, "train") for i, (p, label) in enumerate(files)],
                         None, "paths", sorted({l for _, l in files}), {"method": "benchmark"})
    start = time.perf_counter()
    summary = extract(image_set, store, backbone=backbone, batch_size=batch_size,
                      workers=workers, progress=False, decoder=decoder)
    wall = time.perf_counter() - start
    return summary.n_extracted / wall, {"n_extracted": summary.n_extracted, "n_skipped": summary.n_skipped,
                                        "loop_images_per_second": summary.images_per_second,
                                        "decoder": summary.decoder_detail, "n_gpu_decoded": summary.n_gpu_decoded,
                                        "n_gpu_failed": summary.n_gpu_failed, "precision": summary.precision,
                                        "stage_seconds": stage_seconds(summary), "bottleneck": summary.bottleneck}


def stage_seconds(summary) -> dict:
    """Where (c)'s extraction loop spent its time, from featx's own summary."""
    return {k: round(getattr(summary, f"{k}_seconds"), 3)
            for k in ("loop", "decode_wait", "gpu_decode", "model", "store")}


def stock_keras_in_process(backbone, batch_size):
    """(d) and (e)'s stock network in this process, with the same weights as featx's."""
    import keras

    base = next(layer for layer in backbone.model.layers if isinstance(layer, keras.Model))
    return keras_ways.stock_keras(backbone.spec.constructor, backbone.spec.kwargs, backbone.image_size,
                                  batch_size, base.get_weights())


def keras_ways_fresh_process(backbone, stock_model, batch_size, files, tmp: Path, only: str) -> dict:
    """(d) and (e) as users run them: a fresh process that never imports featx (TensorFlow's own
    defaults). The stock network gets the in-process one's weights through a weights file."""
    import subprocess

    weights = tmp / "stock.weights.h5"
    if not weights.exists():
        stock_model.save_weights(weights)
        # One full and one last-partial batch: the shapes the timed pass will meet.
        n_warm = batch_size + len(files) % batch_size if len(files) > batch_size else len(files)
        linked_tree(files[:n_warm], tmp / "warmup_tree")
    spec = {"constructor": backbone.spec.constructor, "kwargs": backbone.spec.kwargs,
            "image_size": list(backbone.image_size), "weights": str(weights), "batch_size": batch_size,
            "tree": str(tmp / "tree"), "warmup_tree": str(tmp / "warmup_tree"), "only": only}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS" or v != featx_onednn}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("keras_ways.py")), str(tmp / "spec.json")],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"keras_ways.py failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--backbone", default="mobilenet_0.25")
    ap.add_argument("--weights", default="imagenet", help="'none' is fine for timing other backbones")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--only", default="abcde", help="subset of the measurements, e.g. 'abc'")
    ap.add_argument("--repeat", type=int, default=1, help="alternate c, d, e this many times; report medians")
    ap.add_argument("--no-fresh", dest="fresh", action="store_false",
                    help="skip (d) and (e) in a fresh process with TensorFlow's defaults (no featx import)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    ap.add_argument("--configs", default="cpu/float32",
                    help="(c) per DECODER/PRECISION, comma-separated, e.g. cpu/float32,gpu/float32,gpu/bfloat16")
    ap.add_argument("--warmup-n", type=int, default=None,
                    help="images in the untimed warm-up pass (default: all; a few batches suffice for (c) alone)")
    args = ap.parse_args(argv)

    import keras

    from featx.backbones import Backbone
    from featx.pipeline import default_workers
    from featx.runtime import accelerators, versions

    workers = args.workers or default_workers()
    files = pick_files(args.data, args.n)
    configs = [tuple(c.split("/")) for c in args.configs.split(",")]
    if any(len(c) != 2 for c in configs):
        ap.error(f"--configs takes DECODER/PRECISION pairs, got {args.configs!r}")
    backbones = {p: Backbone.build(args.backbone, weights=args.weights, image_size=args.image_size, precision=p)
                 for p in dict.fromkeys(p for _, p in configs)}
    backbone = backbones.get("float32") or next(iter(backbones.values()))

    def suffix(config: tuple[str, str]) -> str:  # the default configuration keeps the keys it always had
        return "" if config == ("cpu", "float32") else f"[{config[0]}/{config[1]}]"
    backend = keras.backend.backend()
    res: dict = {"backbone": args.backbone, "n": len(files), "batch_size": args.batch_size,
                 "image_size": list(backbone.image_size), "workers": workers, "backend": backend,
                 "accelerators": list(accelerators()), "machine": platform.node(),
                 "cpus": os.cpu_count(), "versions": versions(),
                 "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
    samples: dict = {}

    def measure(key, fn, *a):
        samples.setdefault(key, []).append(fn(*a))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "a" in args.only:
            measure("a_decode", bench_decode, files, backbone.image_size, workers)
        if "b" in args.only:
            for precision, bb in backbones.items():
                measure("b_model" + ("" if precision == "float32" else f"[{precision}]"), bench_model, bb,
                        args.batch_size)
        run_keras_ways = backend == "tensorflow" and ("d" in args.only or "e" in args.only)
        if run_keras_ways:
            tree = linked_tree(files, tmp / "tree")
            stock = stock_keras_in_process(backbone, args.batch_size)
        # One untimed pass of each first: Keras' predict traces again for a dataset's shapes (and the
        # last, partial batch), which costs seconds once; featx pads to one shape, but is warmed too.
        # Then c, d and e alternate, so a slow spell of a shared machine does not land on one of them.
        for r in range(-1, args.repeat):
            if r == 0:  # the warm-up pass is not a sample
                for key in ("d_dataset_from_directory", "e_image_data_generator",
                            *(f"c_featx{suffix(c)}" for c in configs)):
                    samples.pop(key, None)
            if "c" in args.only:
                for c in configs:
                    some = files[:args.warmup_n] if r < 0 and args.warmup_n else files
                    rate, res[f"featx{suffix(c)}"] = bench_featx(some, backbones[c[1]], args.batch_size, args.workers,
                                                                 tmp / f"bench{r}{c[0]}{c[1]}.h5", c[0])
                    samples.setdefault(f"c_featx{suffix(c)}", []).append(rate)
            if run_keras_ways and "d" in args.only:
                measure("d_dataset_from_directory", keras_ways.bench_dataset_from_directory, tree,
                        backbone.image_size, args.batch_size, stock)
            if run_keras_ways and "e" in args.only:
                measure("e_image_data_generator", keras_ways.bench_image_data_generator, tree,
                        backbone.image_size, args.batch_size, stock)
            if run_keras_ways and args.fresh and r >= 0:  # a fresh process warms itself up
                fresh = keras_ways_fresh_process(backbone, stock[0], args.batch_size, files, tmp,
                                                 "".join(k for k in "de" if k in args.only))
                res["tf_defaults"] = {k: fresh.pop(k) for k in ("tf_enable_onednn_opts", "tensorflow")}
                for k, v in fresh.items():
                    samples.setdefault(f"{k}_tf_defaults", []).append(v)
    rates = {k: float(np.median(v)) for k, v in samples.items()}
    res["samples"] = samples
    ratios = {}
    if "c_featx" in rates:
        if "d_dataset_from_directory" in rates:
            ratios["c/d"] = rates["c_featx"] / rates["d_dataset_from_directory"]
        if "e_image_data_generator" in rates:
            ratios["c/e"] = rates["c_featx"] / rates["e_image_data_generator"]
        for k in "de":
            if f"{k}_tf_defaults" in rates:
                ratios[f"c/{k} (TF defaults)"] = rates["c_featx"] / rates[f"{k}_tf_defaults"]
        if "a_decode" in rates and "b_model" in rates:
            ratios["c/min(a,b)"] = rates["c_featx"] / min(rates["a_decode"], rates["b_model"])
    for c in configs:
        if suffix(c) and f"c_featx{suffix(c)}" in rates and "c_featx" in rates:
            ratios[f"c{suffix(c)}/c"] = rates[f"c_featx{suffix(c)}"] / rates["c_featx"]
    if "b_model" in rates and "stock_model_tf_defaults" in rates:
        # featx's model-only speed-up over the stock network: what c/d (TF defaults) comes to when
        # both pipelines are model-bound and run at the same share of their model-only rate.
        ratios["b/stock model (TF defaults)"] = rates["b_model"] / rates["stock_model_tf_defaults"]
    res.update(images_per_second=rates, ratios=ratios)
    print(f"{args.backbone} @ {backbone.image_size[0]} px, {len(files)} images, batch {args.batch_size}, "
          f"medians of {args.repeat}, "
          f"{workers} workers, backend {backend}, accelerators {res['accelerators'] or 'none'}")
    for k, v in rates.items():
        print(f"  {k:28s} {v:10.1f} images/s")
    for k, v in ratios.items():
        print(f"  {k:28s} {v:10.2f}")
    for c in configs:  # the last (c) run's breakdown: is the end-to-end run decode- or model-bound?
        if f"featx{suffix(c)}" in res:
            run = res[f"featx{suffix(c)}"]
            print(f"  (c){suffix(c)} stages, last run: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in run["stage_seconds"].items())
                  + f": {run['bottleneck']}-bound; decoder {run['decoder']}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
