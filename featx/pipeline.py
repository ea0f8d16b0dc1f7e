"""Parallel decode → fixed-shape uint8 batches → backbone, with decoding overlapped with the model.

Decoding runs in a thread pool: Pillow, hashlib and NumPy release the GIL in their heavy loops,
so threads decode in parallel without the pickling and start-up cost of processes, and the main
thread's model call (which also releases the GIL) overlaps them. Results come back in input
order through a bounded window, so memory is bounded by the window, not by the number of images.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Container, Iterable, Iterator

import numpy as np

from featx.decode import DEFAULT_MAX_PIXELS, Decoded, decode_file
from featx.sources import Item


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable, items: Iterable, *, workers: int, window: int) -> Iterator:
    """`map(fn, items)` on a thread pool, in order, with at most `window` results in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featx-decode") as pool:
        pending: deque = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(iterator, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


@dataclass
class BatchResult:
    """What one step of the pipeline produced; `features` rows match `computed`."""

    computed: list[tuple[Item, Decoded]] = field(default_factory=list)
    features: np.ndarray | None = None
    reused: list[tuple[Item, Decoded]] = field(default_factory=list)  # content already in the store
    skipped: list[tuple[Item, Decoded]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.computed) + len(self.reused) + len(self.skipped)


def run(
    items: list[Item],
    predict: Callable[[np.ndarray], np.ndarray],
    *,
    image_size: tuple[int, int],
    batch_size: int = 32,
    workers: int | None = None,
    known_hashes: Container[str] = frozenset(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[BatchResult]:
    """Decode `items` in parallel and run `predict` on full, fixed-shape batches.

    The last batch is padded to `batch_size` so a compiled model never sees a new shape.
    Files whose content hash is in `known_hashes` are read and hashed but not decoded (their
    features are reused by the caller). Yields one BatchResult per model call, plus a final one
    for trailing reused/skipped items.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    workers = workers or default_workers()
    height, width = image_size

    def work(item: Item) -> tuple[Item, Decoded]:
        return item, decode_file(item.path, image_size, max_pixels=max_pixels, known_hashes=known_hashes)

    buffer = np.zeros((batch_size, height, width, 3), np.uint8)
    result = BatchResult()
    window = max(2 * batch_size, 4 * workers)
    for item, decoded in ordered_map(work, items, workers=workers, window=window):
        if decoded.skip is not None:
            result.skipped.append((item, decoded))
        elif decoded.pixels is None:
            result.reused.append((item, decoded))
        else:
            buffer[len(result.computed)] = decoded.pixels
            # keep only metadata: the pixels now live in the batch buffer
            result.computed.append((item, replace(decoded, pixels=None)))
            if len(result.computed) == batch_size:
                result.features = predict(buffer)
                yield result
                result = BatchResult()
    if result.computed:
        n = len(result.computed)
        buffer[n:] = 0
        result.features = predict(buffer)[:n]
    if len(result):
        yield result

