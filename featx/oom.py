"""Out-of-memory back-off around the model call: halve the batch and go on, saying so.

A batch size that fits one machine can exhaust another's GPU (or host) memory. Rather than fail a long
extraction, :class:`BackoffPredictor` catches the backend's out-of-memory error, halves the batch it
feeds the model and retries the same images; the smaller size sticks for the rest of the run. The
caller's batch (from the decode pipeline) is split into sub-batches, each padded to the current size,
so the model still sees one fixed shape (a compiled model retraces once per back-off, not per batch).
Nothing already computed is lost: sub-batches that succeeded are kept, and batches already committed
to the store are untouched. At batch size 1 there is nothing left to halve and it fails clearly.

Detection is backend-neutral and by name, so no backend is imported here: TensorFlow's
``ResourceExhaustedError``, PyTorch's ``OutOfMemoryError``, Python's ``MemoryError``, and a JAX/XLA
runtime error (or a plain ``RuntimeError``) whose message says RESOURCE_EXHAUSTED or out of memory.
A process killed by the kernel's OOM killer cannot be caught; the store's crash safety covers it.
"""

from __future__ import annotations

import gc
import logging
from typing import Callable

import numpy as np

log = logging.getLogger("featx")

_OOM_TYPES = {"ResourceExhaustedError", "OutOfMemoryError", "MemoryError"}
_RUNTIME_TYPES = {"XlaRuntimeError", "JaxRuntimeError", "RuntimeError", "InternalError"}
_OOM_MESSAGES = ("resource_exhausted", "out of memory", "oom when allocating")


class OutOfMemory(RuntimeError):
    """The model ran out of memory even one image at a time."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a backend's out-of-memory error."""
    seen = 0
    while exc is not None and seen < 8:  # Keras may wrap the backend's error
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & _OOM_TYPES:
            return True
        if names & _RUNTIME_TYPES and any(m in str(exc).lower() for m in _OOM_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class BackoffPredictor:
    """Wrap `predict` (uint8 batch → features) so an out-of-memory error halves the batch and retries.

    `batch_size` is the size currently fed to the model (it only shrinks); `backoffs` lists
    ``(from, to)`` for every halving.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], batch_size: int):
        self._predict = predict
        self.batch_size = int(batch_size)
        self.backoffs: list[tuple[int, int]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return self._predict(batch)
        out: list[np.ndarray] = []
        start = 0
        while start < len(batch):  # one call unless the batch had to shrink
            features, start = self._call_with_backoff(batch, start, len(batch))
            out.append(features)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _call_with_backoff(self, batch: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, int]:
        """Features of batch[start:start + current size] (padded to that size); returns (features, next start)."""
        while True:
            size = self.batch_size
            piece = batch[start:min(stop, start + size)]
            if len(piece) < size and len(batch) > size:
                # keep the shape the model has compiled for: pad the last sub-batch with zeros
                padded = np.zeros((size,) + batch.shape[1:], batch.dtype)
                padded[:len(piece)] = piece
            else:
                padded = piece
            try:
                return self._predict(padded)[:len(piece)], start + len(piece)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if size == 1:
                    raise OutOfMemory(
                        f"out of memory even at batch size 1 ({type(exc).__name__}: {str(exc)[:200]}); "
                        "the model does not fit this device: use a smaller --image-size, another backbone, "
                        "or --device cpu. Batches already extracted are saved"
                    ) from exc
                del exc  # drop the traceback's references to the failed call's buffers before retrying
                gc.collect()
                new = max(1, size // 2)
                log.warning("out of memory at batch %d, retrying with %d", size, new)
                self.backoffs.append((size, new))
                self.batch_size = new
