"""Memory and the model call: a batch size chosen from the free memory, and out-of-memory back-off.

:func:`auto_batch_size` (``--batch-size auto``) picks the largest power-of-two batch whose estimated
activations fit a share of the free memory of the device that computes, within a cap.

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
import os
import subprocess
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


# --------------------------------------------------------------------------------------------
# Choosing the batch size from the memory there is

#: Largest automatic batch: on a CPU bigger batches stop paying off around 64 images (and cost
#: host memory); a GPU keeps gaining up to a few hundred (H200: 256 reached the model's peak rate).
AUTO_BATCH_CAP = {"cpu": 64, "gpu": 512}
#: Share of the free memory the activations may plan to use: the rest is headroom for the backend's
#: own workspace, the decode window and other processes. A wrong guess costs one back-off, not a run.
AUTO_MEMORY_SHARE = {"cpu": 0.25, "gpu": 0.5}


def activation_bytes_per_image(model) -> int:
    """A generous estimate of the memory one image needs while ``model`` runs: three float32 copies
    of its largest activation (input, output and a workspace of the widest layer)."""
    widest = 0
    for layer in model._flatten_layers(include_self=False):
        try:
            outputs = layer.output
        except (AttributeError, ValueError):  # a layer used twice has no single output
            continue
        for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            shape = getattr(out, "shape", None)
            if shape is not None and len(shape) > 1 and all(d is not None for d in shape[1:]):
                widest = max(widest, int(np.prod(shape[1:])))
    return 3 * 4 * max(widest, 1)


def free_memory_bytes(device: str) -> tuple[int | None, str]:
    """Free memory of the device that computes (bytes, where the number came from); None if unknown."""
    if device == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "sysconf"
        except (ValueError, OSError, AttributeError):
            return None, "unknown"
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), "JAX memory_stats"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(0)[0]), "torch.cuda.mem_get_info"
    try:  # TensorFlow exposes no total; the driver's tool does
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return int(float(out.stdout.split()[0]) * 2**20), "nvidia-smi"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return None, "unknown"


def auto_batch_size(model, device: str, n_images: int | None = None) -> tuple[int, str]:
    """A batch size for ``model`` on ``device`` ("cpu" or "gpu") from the free memory: the largest
    power of two whose estimated activations fit the planned share, capped (AUTO_BATCH_CAP) and, for
    a run of ``n_images``, no larger than the power of two that holds them all (the last batch is
    padded: 5 images should not cost a batch of 64). Returns (size, a sentence saying why).
    Out-of-memory back-off (BackoffPredictor) covers an estimate that turns out too generous."""
    if device not in AUTO_BATCH_CAP:
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    cap = AUTO_BATCH_CAP[device]
    if n_images is not None:
        cap = min(cap, 1 << (max(1, n_images) - 1).bit_length())
    per_image = activation_bytes_per_image(model)
    free, source = free_memory_bytes(device)
    if free is None:
        size = min(cap, 32)
        return size, f"batch size {size}: free {device} memory unknown (~{per_image / 2**20:.0f} MiB per image)"
    budget = free * AUTO_MEMORY_SHARE[device]
    fits = int(budget // per_image)
    size = 1 << max(0, min(fits, cap).bit_length() - 1)  # largest power of two <= min(fits, cap)
    return size, (f"batch size {size}: {free / 2**30:.1f} GiB free ({source}), ~{per_image / 2**20:.0f} MiB "
                  f"per image, planned share {AUTO_MEMORY_SHARE[device]:.0%}, cap {cap}")


def check_batch_size(batch_size) -> None:
    """A batch size is a positive int, or "auto" (chosen from the free memory)."""
    if batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer or 'auto', got {batch_size!r}")
