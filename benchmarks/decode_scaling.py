"""Decode stage scaling: threads (featx's pipeline today) vs processes writing into shared memory.

    python benchmarks/decode_scaling.py DATA [--n 1000] [--workers 1,2] [--size 224] [--json FILE]

For each worker count k, in one run and alternated (threads, processes, threads, processes, ...):
  threads    featx.pipeline.ordered_map(decode_file) with k threads (growing to 2k while the consumer
             waits, as the pipeline does), pixels copied into a preallocated batch buffer
  processes  k processes (forkserver, started and warmed before timing) each decoding a file with the
             same decode_file and writing its pixels straight into a shared-memory slot; the consumer
             copies slots into the batch buffer in input order (a bounded window of slots)
Prints images/s of both and processes/threads per k: the pipeline's thread design changes only if
the ratio says so on the machine that matters (issue 14: 4, 8, 16 workers on the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory

import numpy as np

_SHM: shared_memory.SharedMemory | None = None
_SLOTS: np.ndarray | None = None


def _attach(name: str, shape: tuple) -> None:
    global _SHM, _SLOTS
    _SHM = shared_memory.SharedMemory(name=name)
    _SLOTS = np.ndarray(shape, np.uint8, buffer=_SHM.buf)


def _decode_into(slot: int, path: str, size: tuple[int, int]) -> tuple[int, str, str | None]:
    from featx.decode import decode_file

    d = decode_file(path, size)
    if d.pixels is not None:
        _SLOTS[slot] = d.pixels
    return slot, d.sha256, None if d.skip is None else d.skip.kind


def _noop(_: object = None) -> int:
    return os.getpid()


def bench_threads(files: list[str], size: tuple[int, int], workers: int, batch: int) -> float:
    from featx.decode import decode_file
    from featx.pipeline import ordered_map

    buffer = np.zeros((batch, *size, 3), np.uint8)
    start, n = time.perf_counter(), 0
    for d in ordered_map(lambda p: decode_file(p, size), files, workers=workers, window=max(2 * batch, 8 * workers),
                         max_workers=2 * workers):
        if d.pixels is not None:
            buffer[n % batch] = d.pixels
            n += 1
    return n / (time.perf_counter() - start)


def bench_processes(files: list[str], size: tuple[int, int], workers: int, batch: int) -> float:
    window = max(2 * batch, 8 * workers)
    shape = (window, *size, 3)
    shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
    try:
        slots = np.ndarray(shape, np.uint8, buffer=shm.buf)
        buffer = np.zeros((batch, *size, 3), np.uint8)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver"), initializer=_attach,
                                 initargs=(shm.name, shape)) as pool:
            list(pool.map(_noop, range(4 * workers)))  # started and warm: start-up is not timed
            list(pool.map(_decode_into, [0] * workers, files[:workers], [size] * workers))  # imports done
            start, n, pending = time.perf_counter(), 0, []
            it = iter(enumerate(files))
            for i, path in it:
                pending.append(pool.submit(_decode_into, i % window, path, size))
                if len(pending) >= window:
                    break
            while pending:
                slot, _, skip = pending.pop(0).result()
                if skip is None:
                    buffer[n % batch] = slots[slot]  # the slot is free again once copied
                    n += 1
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(_decode_into, nxt[0] % window, nxt[1], size))
            return n / (time.perf_counter() - start)
    finally:
        shm.close()
        shm.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from featx.sources import from_directory

    files = [it.path for it in from_directory(args.data).items[:args.n]]
    size = (args.size, args.size)
    samples: dict = {}
    for k in [int(w) for w in args.workers.split(",")]:
        for _ in range(args.repeat):
            samples.setdefault(f"threads_{k}", []).append(bench_threads(files, size, k, args.batch))
            samples.setdefault(f"processes_{k}", []).append(bench_processes(files, size, k, args.batch))
    rates = {key: float(np.median(v)) for key, v in samples.items()}
    ratios = {f"processes/threads @ {k}": rates[f"processes_{k}"] / rates[f"threads_{k}"]
              for k in (key.split("_")[1] for key in rates if key.startswith("threads_"))}
    print(f"decode scaling: {len(files)} files of {args.data} to {args.size} px, medians of {args.repeat}, "
          f"{os.cpu_count()} cpus")
    for key, v in rates.items():
        print(f"  {key:24s} {v:9.1f} images/s")
    for key, v in ratios.items():
        print(f"  {key:24s} {v:9.2f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"check": "decode_scaling", "n": len(files), "cpus": os.cpu_count(),
                                "samples": samples, "images_per_second": rates, "ratios": ratios}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
