"""FeatureExtractor(cache=...): first vs second transform of the same paths, in one run.

    python benchmarks/cache.py DATA [--n 1000] [--backbone mobilenet_0.25]

The first transform runs the CNN and fills the cache; the second (a fresh FeatureExtractor, as in
another grid-search fold or process) only hashes the files and reads the store. Prints both times
and their ratio (target: second at least 50x faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--backbone", default="mobilenet_0.25")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np

    from featx.sklearn import FeatureExtractor
    from featx.sources import from_directory

    paths = [it.path for it in from_directory(args.data).items[: args.n]]
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache.h5")
        FeatureExtractor(backbone=args.backbone).fit().transform(paths[:8])  # build/compile outside the timing
        start = time.perf_counter()
        first = FeatureExtractor(backbone=args.backbone, cache=cache).fit().transform(paths)
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        second = FeatureExtractor(backbone=args.backbone, cache=cache).fit().transform(paths)
        t_second = time.perf_counter() - start
    assert np.array_equal(first, second)
    res = {"n": len(paths), "backbone": args.backbone, "first_s": t_first, "second_s": t_second,
           "ratio": t_first / t_second}
    print(f"{len(paths)} paths, {args.backbone}: first transform {t_first:.2f} s, second {t_second:.3f} s, "
          f"ratio {res['ratio']:.0f}x")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
