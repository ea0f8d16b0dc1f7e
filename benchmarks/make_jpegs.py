"""Make benchmark JPEGs of a given size from real photos (class folders in, class folders out).

    python benchmarks/make_jpegs.py SRC DEST --size 500x375 [--n 4000] [--quality 90]

Photos are resized (bicubic) and, when more are asked for than exist, reused with a
horizontal flip so every output file has distinct bytes. Runs on all cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _make(job: tuple[str, str, int, int, bool, int]) -> None:
    from PIL import Image, ImageOps

    src, dest, w, h, flip, quality = job
    with Image.open(src) as img:
        img = img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        if flip:
            img = ImageOps.mirror(img)
        img.save(dest, "JPEG", quality=quality)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dest")
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    sources = sorted(p for p in Path(args.src).glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        print(f"no images under {args.src}/<class>/", file=sys.stderr)
        return 1
    n = args.n or len(sources)
    jobs = []
    for i in range(n):
        src = sources[i % len(sources)]
        out = Path(args.dest) / src.parent.name / f"{src.stem}_{i // len(sources)}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            jobs.append((str(src), str(out), w, h, (i // len(sources)) % 2 == 1, args.quality))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_make, jobs, chunksize=32))
    print(f"{n} JPEGs of {w}x{h} in {args.dest} ({len(jobs)} new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
