"""What the store costs, measured side by side in one run on the same files.

    python benchmarks/store.py DATA [--backbone mobilenet_0.25] [--n 300] [--json FILE]

1. write cost: `featx.extract` into a fresh store vs `extract_features` (same pipeline and model, no
   store) on the same N images; the ratio is the store's share of extraction time (target <= 5%).
2. float16: the store size and a linear probe's validation accuracy with float16 vs float32 features
   (float16 store = the float32 features rounded as `--dtype float16` writes them; target: < 0.2 points).
3. memory: peak RSS of `featx extract` for N and for 10 x N images, each in a fresh process (streaming:
   target within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RSS_SCRIPT = """
import dataclasses, resource, sys
from featx.extract import extract
from featx.sources import from_directory
full = from_directory(sys.argv[1])
s = extract(dataclasses.replace(full, items=full.items[:int(sys.argv[3])]), sys.argv[2], backbone=sys.argv[4],
            batch_size=int(sys.argv[5]), progress=False)
print(s.n_extracted, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_cost(data: str, backbone: str, n: int, batch_size: int, tmp: Path) -> dict:
    from featx.backbones import Backbone
    from featx.extract import extract, extract_features
    from dataclasses import replace

    from featx.sources import from_directory

    full = from_directory(data)
    items = full.items[:n]
    bb = Backbone.build(backbone)
    bb.predict(np.zeros((batch_size, *bb.image_size, 3), np.uint8))  # warm up: compile outside the timings
    timings = {"in_memory": [], "store": []}
    for i in range(3):  # alternate, take medians: this machine's speed drifts
        t = time.perf_counter()
        extract_features([it.path for it in items], bb, batch_size=batch_size)
        timings["in_memory"].append(time.perf_counter() - t)
        t = time.perf_counter()
        extract(replace(full, items=items), tmp / f"cost{i}.h5", backbone=bb, batch_size=batch_size,
                progress=False)
        timings["store"].append(time.perf_counter() - t)
    mem, store = float(np.median(timings["in_memory"])), float(np.median(timings["store"]))
    return {"n": len(items), "in_memory_s": mem, "store_s": store, "store_share": (store - mem) / store,
            "runs": timings}


def float16_effect(store: str) -> dict:
    from featx.linear import train
    from featx.store import FeatureStore

    with FeatureStore(store) as fs:
        X, y = fs.split("train")
        Xv, yv = fs.split("validation")
    out = {"n_train": int(len(X)), "n_validation": int(len(Xv)), "bytes_float32": int(X.nbytes + Xv.nbytes),
           "bytes_float16": int((X.nbytes + Xv.nbytes) // 2)}
    for name, cast in (("float32", np.float32), ("float16", np.float16)):
        A, B = X.astype(cast).astype(np.float32), Xv.astype(cast).astype(np.float32)
        model = train(A, y, classifier="logreg", penalty="l2", cv=5).estimator
        out[f"accuracy_{name}"] = float((model.predict(B) == yv).mean())
    out["delta_points"] = 100 * (out["accuracy_float16"] - out["accuracy_float32"])
    return out


def peak_rss(data: str, backbone: str, n: int, batch_size: int, tmp: Path) -> dict:
    out = {}
    for count in (n, 10 * n):
        proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, data, str(tmp / f"rss{count}.h5"), str(count),
                               backbone, str(batch_size)], capture_output=True, text=True, check=True)
        done, kib = proc.stdout.split()[-2:]
        out[str(count)] = {"extracted": int(done), "peak_rss_mib": int(kib) / 1024}
    a, b = out[str(n)]["peak_rss_mib"], out[str(10 * n)]["peak_rss_mib"]
    out["ratio_10n_vs_n"] = b / a
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="class folders (for 1 and 3)")
    ap.add_argument("--backbone", default="mobilenet_0.25")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--store", default=None, help="an existing float32 store with train/validation (for 2)")
    ap.add_argument("--only", default="123")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)
    result = {"machine": platform.platform(), "cpus": os.cpu_count(), "backbone": args.backbone,
              "batch_size": args.batch_size, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "1" in args.only:
            result["write_cost"] = write_cost(args.data, args.backbone, args.n, args.batch_size, tmp)
            r = result["write_cost"]
            print(f"1. store write cost: in memory {r['in_memory_s']:.2f} s, into a store {r['store_s']:.2f} s "
                  f"for {r['n']} images -> store share {100 * r['store_share']:.1f}% (target <= 5%)")
        if "2" in args.only:
            if not args.store:
                ap.error("--store is needed for 2 (float16)")
            result["float16"] = r = float16_effect(args.store)
            print(f"2. float16: {r['bytes_float32'] / 2**20:.1f} MiB -> {r['bytes_float16'] / 2**20:.1f} MiB; "
                  f"logreg-l2 validation accuracy {r['accuracy_float32']:.4f} -> {r['accuracy_float16']:.4f} "
                  f"({r['delta_points']:+.2f} points; target |change| < 0.2)")
        if "3" in args.only:
            result["peak_rss"] = r = peak_rss(args.data, args.backbone, args.n, args.batch_size, tmp)
            print(f"3. peak RSS: {args.n} images {r[str(args.n)]['peak_rss_mib']:.0f} MiB, {10 * args.n} images "
                  f"{r[str(10 * args.n)]['peak_rss_mib']:.0f} MiB -> ratio {r['ratio_10n_vs_n']:.3f} "
                  "(target <= 1.10)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
