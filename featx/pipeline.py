"""Parallel decode → fixed-shape uint8 batches → backbone, with decoding overlapped with the model.

Decoding runs in a thread pool: Pillow, hashlib and NumPy release the GIL in their heavy loops,
so threads decode in parallel without the pickling and start-up cost of processes, and the main
thread's model call (which also releases the GIL) overlaps them. Results come back in input
order through a bounded window, so memory is bounded by the window, not by the number of images.

Each image has a time limit (``image_timeout``): a file that takes longer to read and decode (a
hung network share, a pathological file) becomes a ``timeout`` skip and the run goes on. A Python
thread cannot be killed, so the stuck one is abandoned instead: the pool replaces it, drops its
late result, and - being a daemon thread - it never holds up the process's exit.
"""

from __future__ import annotations

import math
import numbers
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Container, Iterable, Iterator

import numpy as np

from featx.decode import DEFAULT_MAX_PIXELS, Decoded, Skip, decode_deferred, decode_file
from featx.sources import Item

# Seconds one image may take to read and decode. A 100-Mpixel JPEG decodes in about a second on
# one core, so a minute means "stuck", not "slow", even on a loaded machine or a slow disk.
DEFAULT_IMAGE_TIMEOUT = 60.0


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class StuckDecodes(RuntimeError):
    """Too many images are stuck at once (each past its time limit): the storage is probably hanging."""


class _Task:
    __slots__ = ("item", "started", "thread", "done", "abandoned", "value", "error", "event")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.started: float | None = None  # time.monotonic() when a worker took it
        self.thread: threading.Thread | None = None
        self.done = self.abandoned = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.event = threading.Event()


class _DaemonPool:
    """Worker threads for ordered_map that can abandon a task stuck past its time limit.

    concurrent.futures.ThreadPoolExecutor cannot do this: its threads are joined when the pool
    shuts down and again at interpreter exit, so one read stuck on a dead network share would hang
    the run and then the process's exit. Here workers are daemon threads; an abandoned worker is
    replaced at once (the pool keeps its width) and exits when its call finally returns.
    """

    def __init__(self, fn: Callable, workers: int, max_stuck: int) -> None:
        self._fn = fn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._workers: set[threading.Thread] = set()
        self._spawned = 0
        self._stuck: list[tuple[threading.Thread, Any]] = []
        self._max_stuck = max_stuck
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        t = threading.Thread(target=self._work, name=f"featx-decode-{self._spawned}", daemon=True)
        self._spawned += 1
        self._workers.add(t)
        t.start()

    def grow(self) -> None:
        """One more worker thread (decoding is what the consumer waits for)."""
        with self._lock:
            if not self._closed:
                self._spawn()

    def submit(self, item: Any) -> _Task:
        task = _Task(item)
        self._queue.put(task)
        return task

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            task = self._queue.get()
            if task is None or self._closed:
                return
            task.thread, task.started = me, time.monotonic()
            try:
                value, error = self._fn(task.item), None
            except BaseException as e:  # handed to the consumer, as Future.result() would
                value, error = None, e
            with self._lock:
                if task.abandoned:
                    return  # already replaced and reported as timed out: drop the late result
                task.value, task.error, task.done = value, error, True
            task.event.set()

    def result(self, task: _Task, timeout: float | None, on_timeout: Callable[[Any], Any]) -> Any:
        """The task's value, in the calling thread; on_timeout(item) once it ran past `timeout`."""
        while not task.done:
            started = task.started
            if timeout is None:
                task.event.wait()
            elif started is None:
                # Queued behind other work (only momentarily: tasks start in submission order).
                task.event.wait(min(timeout, 0.05))
            elif not task.event.wait(max(0.0, started + timeout - time.monotonic())):
                with self._lock:
                    if not task.done:
                        task.abandoned = True
                        self._abandon(task)
                if task.abandoned:
                    return on_timeout(task.item)
        if task.error is not None:
            raise task.error
        return task.value

    def _abandon(self, task: _Task) -> None:
        # Called with the lock held. The stuck thread keeps its call running; replace it.
        self._workers.discard(task.thread)
        self._stuck = [(t, it) for t, it in self._stuck if t.is_alive()]
        self._stuck.append((task.thread, task.item))
        if len(self._stuck) > self._max_stuck:
            raise StuckDecodes(
                f"{len(self._stuck)} images are each still being read after their time limit (e.g. "
                + ", ".join(repr(getattr(it, "path", it)) for _, it in self._stuck[:3])
                + "): the disk or network share they are on is probably hanging; stopped rather than "
                "pile up stuck threads. Fix the storage (or move those files away) and rerun."
            )
        self._spawn()

    def close(self, *, wait: bool) -> None:
        self._closed = True  # workers drop queued tasks instead of decoding them
        workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        if wait:  # only when every task is done: the workers are idle and exit at once
            for t in workers:
                t.join()


def check_image_timeout(seconds: float | None) -> float | None:
    """Validate a per-image time limit: positive seconds, or None for no limit."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds > 0:
        raise ValueError(f"image_timeout must be a positive number of seconds or None (no limit), got {seconds!r}")
    return None if math.isinf(seconds) else float(seconds)


_END = object()
#: ordered_map looks at this many consumed results before deciding whether to add a thread.
GROW_EVERY = 32


def ordered_map(
    fn: Callable,
    items: Iterable,
    *,
    workers: int,
    window: int,
    timeout: float | None = None,
    on_timeout: Callable[[Any], Any] | None = None,
    max_stuck: int | None = None,
    max_workers: int | None = None,
) -> Iterator:
    """`map(fn, items)` on daemon threads, in order, with at most `window` results in flight.

    With `max_workers` > `workers`, a thread is added (up to `max_workers`) whenever the consumer
    spent more than a quarter of the time of the last GROW_EVERY results waiting for them: the work
    is then what holds the consumer up. More threads than cores pay off when `fn` holds the GIL part
    of the time (Pillow parses headers and steps its decoder in Python): on 2 cores, 2000x1500 JPEGs
    went 115 -> 140 images/s end to end with 4 threads. When the consumer is the slow side (a slow
    model), its results are always ready, nothing grows, and no thread competes with the model.

    With `timeout` (seconds, counted from when a worker starts on the item), an item still running
    after it yields `on_timeout(item)` instead and its thread is abandoned; more than `max_stuck`
    abandoned threads still running at once raises StuckDecodes. Exceptions of `fn` propagate.
    """
    if timeout is not None and on_timeout is None:
        raise ValueError("ordered_map: a timeout needs on_timeout")
    timeout = check_image_timeout(timeout)
    max_workers = max(workers, max_workers or workers)
    pool = _DaemonPool(fn, workers, max_stuck if max_stuck is not None else max(8, 2 * max_workers))
    finished = False
    width, consumed, recent, waited, stretch_start = workers, 0, 0, 0.0, 0.0
    try:
        pending: deque = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(item))
            if len(pending) >= window:
                break
        while pending:
            task = pending.popleft()
            asked = time.monotonic()
            result = pool.result(task, timeout, on_timeout)
            consumed += 1
            if width < max_workers and consumed > window:  # the first window is start-up, not a signal
                now = time.monotonic()
                waited += now - asked
                recent += 1
                if recent == 1:
                    stretch_start = asked
                elif recent == GROW_EVERY:
                    if waited > 0.25 * (now - stretch_start):
                        pool.grow()
                        width += 1
                    recent, waited = 0, 0.0
            nxt = next(iterator, _END)
            if nxt is not _END:  # (not `is not None`: None is a valid item)
                pending.append(pool.submit(nxt))
            yield result
        finished = True
    finally:
        # An early exit (consumer stopped, Ctrl-C, an error) does not wait for running decodes.
        pool.close(wait=finished)


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
    image_timeout: float | None = DEFAULT_IMAGE_TIMEOUT,
    batch_decoder: Any = None,
) -> Iterator[BatchResult]:
    """Decode `items` in parallel and run `predict` on full, fixed-shape batches.

    The last batch is padded to `batch_size` so a compiled model never sees a new shape.
    Files whose content hash is in `known_hashes` are read and hashed but not decoded (their
    features are reused by the caller). A file not read and decoded within `image_timeout`
    seconds (None: no limit) is skipped as "timeout". Yields one BatchResult per model call,
    plus a final one for trailing reused/skipped items.

    With `batch_decoder` (a featx.gpudecode.BatchJpegDecoder), the threads still read and hash every
    file, but the files it `accepts` are decoded by it a batch at a time; the others, and any it fails
    on, by the CPU decoder, so skips are the same as without it.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    image_timeout = check_image_timeout(image_timeout)
    # Default: start with one thread per core and add threads (up to two per core) while the model
    # waits for decoding; an explicit `workers` is taken as it is.
    max_workers = workers or 2 * default_workers()
    workers = workers or default_workers()

    defer = None if batch_decoder is None else (lambda data: batch_decoder.accepts(data, max_pixels))

    def work(item: Item) -> tuple[Item, Decoded]:
        return item, decode_file(item.path, image_size, max_pixels=max_pixels, known_hashes=known_hashes,
                                 defer=defer)

    def timed_out(item: Item) -> tuple[Item, Decoded]:
        return item, _timeout_decoded(item, image_timeout)

    batches = _BatchFiller(batch_size, image_size, batch_decoder, max_pixels)
    window = max(2 * batch_size, 4 * max_workers)
    for item, decoded in ordered_map(work, items, workers=workers, window=window, timeout=image_timeout,
                                     on_timeout=timed_out, max_workers=max_workers):
        batches.take(item, decoded)
        if batches.full():
            yield batches.predict(predict)
    last = batches.finish(predict)
    if len(last):
        yield last


def _timeout_decoded(item: Item, image_timeout: float | None) -> Decoded:
    # Nothing is known about the file: touching it again (even a stat) could hang as well.
    skip = Skip("timeout", (
        f"reading and decoding took longer than the per-image limit of {image_timeout:g} s "
        "(--image-timeout); abandoned so the run could go on. A hung disk or network share, or a "
        "pathological file: check that it opens in an image viewer"))
    return Decoded(os.fsdecode(item.path), "", -1, -1, None, skip)


class _BatchFiller:
    """Sorts decoded items into one BatchResult and its fixed-shape uint8 batch buffer.

    Files the batch decoder took (``Decoded.encoded``) wait in `deferred` until, with the decoded
    ones, they would fill the batch; then they are decoded together.
    """

    def __init__(self, batch_size: int, image_size: tuple[int, int], batch_decoder: Any, max_pixels: int) -> None:
        height, width = image_size
        self.batch_size, self.image_size = batch_size, image_size
        self.batch_decoder, self.max_pixels = batch_decoder, max_pixels
        self.buffer = np.zeros((batch_size, height, width, 3), np.uint8)
        self.result = BatchResult()
        self.deferred: list[tuple[Item, Decoded]] = []  # taken by batch_decoder, decoded when the batch is full

    def take(self, item: Item, decoded: Decoded) -> None:
        if decoded.encoded is not None:
            self.deferred.append((item, decoded))
        else:
            self._add(item, decoded)
        if self.deferred and len(self.result.computed) + len(self.deferred) == self.batch_size:
            self._decode_deferred()  # fills the batch, less any it had to skip

    def full(self) -> bool:
        return len(self.result.computed) == self.batch_size

    def predict(self, predict: Callable[[np.ndarray], np.ndarray]) -> BatchResult:
        """The full batch's result with its features; the next batch starts empty."""
        result, self.result = self.result, BatchResult()
        result.features = predict(self.buffer)
        return result

    def finish(self, predict: Callable[[np.ndarray], np.ndarray]) -> BatchResult:
        """The last, partial batch: padded with zeros to the fixed shape, its features cut back."""
        if self.deferred:
            self._decode_deferred()
        result = self.result
        if result.computed:
            n = len(result.computed)
            self.buffer[n:] = 0
            result.features = predict(self.buffer)[:n]
        return result

    def _add(self, item: Item, decoded: Decoded) -> None:
        if decoded.skip is not None:
            self.result.skipped.append((item, decoded))
        elif decoded.pixels is None:
            self.result.reused.append((item, decoded))
        else:
            self.buffer[len(self.result.computed)] = decoded.pixels
            # keep only metadata: the pixels now live in the batch buffer
            self.result.computed.append((item, replace(decoded, pixels=None)))

    def _decode_deferred(self) -> None:
        pixels = self.batch_decoder.decode([d.encoded for _, d in self.deferred], self.image_size)
        for (item, decoded), rgb in zip(self.deferred, pixels):
            if rgb is None:  # the batched decoder failed on it: the CPU decoder decodes it or says why not
                self._add(item, decode_deferred(decoded, self.image_size, max_pixels=self.max_pixels))
            else:
                self._add(item, replace(decoded, pixels=rgb, encoded=None))
        self.deferred.clear()
