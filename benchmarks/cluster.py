"""Distributed extraction overhead and scaling, measured side by side in one run on the same files.

    python benchmarks/cluster.py DATA [--n 600] [--repeat 3] [--backbone mobilenet_0.25] [--batch-size 64]

(p) plain `featx.extract` into a fresh store, the backbone built beforehand
(1) `extract_distributed(cluster=local:1)` into a fresh store: one worker process
(2) `extract_distributed(cluster=local:2)` into a fresh store: two worker processes

Each cluster is started and its workers build the backbone and run it once on a full and a partial batch
(the one-off graph tracing; the plain run's backbone gets the same warm-up) before the clock starts, so
(1) and (2) time what a long run pays per image: listing, planning, shipping shards, extraction, the
shard stores and the merge; the one-off start (worker processes importing the Keras backend, building
and tracing the model) is reported apart. While a cluster is up, plain and cluster runs alternate
`--repeat` times and medians are compared, because a shared machine drifts by tens of percent within a
minute. Prints images/s, the overhead of local:1 over plain (target <= 10%) and the speed-up of local:2
over local:1, and appends one JSON line to --json.
DATA is a folder of class folders; N images are taken evenly across it (every k-th file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pick(data: str, n: int):
    from featx.sources import from_directory

    image_set = from_directory(data)
    step = max(1, len(image_set.items) // n)
    return replace(image_set, items=image_set.items[::step][:n])


def warm(backbone, batch_size: int):
    """Trace the model for a full and a partial batch, as a long run has long done."""
    import numpy as np

    for n in (batch_size, max(1, batch_size // 3)):
        backbone.predict(np.zeros((n, *backbone.image_size, 3), np.uint8))
    return backbone


def warm_worker(config: dict, batch_size: int) -> None:
    from featx.distributed import worker_backbone

    warm(worker_backbone(**config), batch_size)


def run_plain(image_set, store: Path, backbone, batch_size: int) -> dict:
    from featx.extract import extract

    start = time.perf_counter()
    s = extract(image_set, store, backbone=backbone, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "images_per_second": s.n_extracted / wall, "n_extracted": s.n_extracted,
            "loop_images_per_second": s.images_per_second}


def run_cluster(image_set, tmp: Path, n_workers: int, config: dict, batch_size: int, backbone,
                repeat: int) -> tuple[dict, list[dict]]:
    """Start a local:N cluster, warm it, then alternate plain and cluster runs `repeat` times."""
    import distributed

    from featx.distributed import extract_distributed, start_local_cluster

    start = time.perf_counter()
    runs, plains = [], []
    with start_local_cluster(n_workers) as cluster, distributed.Client(cluster) as client:
        client.wait_for_workers(n_workers)
        client.run(warm_worker, config, batch_size)  # every worker imports the backend, builds and traces once
        ready = time.perf_counter() - start
        for r in range(repeat):
            plains.append(run_plain(image_set, tmp / f"plain-{n_workers}-{r}.h5", backbone, batch_size))
            start = time.perf_counter()
            s = extract_distributed(image_set, tmp / f"local{n_workers}-{r}.h5", cluster=client,
                                    backbone=config["name"], image_size=config["image_size"],
                                    batch_size=batch_size, progress=False)
            wall = time.perf_counter() - start
            runs.append({"wall_s": wall, "images_per_second": s.n_extracted / wall, "n_extracted": s.n_extracted,
                         "n_shards": s.n_shards, "merge_s": s.merge.get("seconds", 0.0),
                         "loop_images_per_second": s.images_per_second})
    walls = sorted(r["wall_s"] for r in runs)
    return {"start_s": ready, "runs": runs, "median_wall_s": walls[len(walls) // 2],
            "images_per_second": runs[0]["n_extracted"] / walls[len(walls) // 2],
            "n_shards": runs[0]["n_shards"]}, plains


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--backbone", default="mobilenet_0.25")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="alternating plain/cluster runs per cluster (medians)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file "
                                                 "(default benchmarks/results/cluster_cpu<cores>_<date>.jsonl)")
    args = ap.parse_args(argv)

    from featx.backbones import Backbone
    from featx.pipeline import default_workers
    from featx.runtime import accelerators, versions

    image_set = pick(args.data, args.n)
    backbone = warm(Backbone.build(args.backbone, image_size=args.image_size), args.batch_size)
    config = {"name": args.backbone, "weights": "imagenet", "image_size": args.image_size, "pooling": "avg",
              "layer": None}
    res: dict = {"benchmark": "cluster", "backbone": args.backbone, "n": len(image_set.items),
                 "batch_size": args.batch_size, "image_size": list(backbone.image_size), "cores": default_workers(),
                 "accelerators": list(accelerators()), "machine": platform.node(), "versions": versions(),
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one, plains1 = run_cluster(image_set, tmp, 1, config, args.batch_size, backbone, args.repeat)
        two, plains2 = run_cluster(image_set, tmp, 2, config, args.batch_size, backbone, args.repeat)
    n = len(image_set.items)
    plain_walls = sorted(r["wall_s"] for r in plains1 + plains2)
    plain_wall = plain_walls[len(plain_walls) // 2]
    res.update(plain=plains1 + plains2, plain_median_wall_s=plain_wall, local1=one, local2=two,
               overhead_local1=one["median_wall_s"] / plain_wall - 1,
               speedup_local2=one["median_wall_s"] / two["median_wall_s"])
    print(f"{args.backbone} @ {backbone.image_size[0]} px, {n} images, batch {args.batch_size}, "
          f"{res['cores']} cores, accelerators {res['accelerators'] or 'none'}, medians of {args.repeat} runs")
    print(f"  plain extract()      {n / plain_wall:7.1f} images/s  (runs: "
          + ", ".join(f"{n / w:.0f}" for w in plain_walls) + ")")
    for name, r in (("local:1", one), ("local:2", two)):
        print(f"  --cluster {name}    {r['images_per_second']:7.1f} images/s  (runs: "
              + ", ".join(f"{x['images_per_second']:.0f}" for x in r["runs"])
              + f"; {r['n_shards']} shards; cluster start + model build {r['start_s']:.1f} s, not included)")
    print(f"  overhead of local:1 over plain: {100 * res['overhead_local1']:+.1f}%   (target <= +10%)")
    print(f"  local:2 / local:1 speed-up:     {res['speedup_local2']:.2f}x")
    out = args.json or str(Path(__file__).parent / "results" /
                           f"cluster_cpu{res['cores']}_{time.strftime('%Y-%m-%d')}.jsonl")
    with open(out, "a") as f:
        f.write(json.dumps(res) + "\n")
    print(f"  → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
