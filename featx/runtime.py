"""What featx runs on: the Keras backend, the device it computes on, and library versions.

Kept apart from the model code so that importing it is cheap until a question is actually asked;
the backend (and TensorFlow in particular) is imported only inside the functions that need it.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache

DEVICES = ("auto", "cpu", "gpu")


class DeviceError(RuntimeError):
    """The device the user asked for is not available (never silently replaced by another)."""


def prefer_fast_cpu_kernels() -> None:
    """Ask TensorFlow for its oneDNN CPU kernels unless the user chose (TF_ENABLE_ONEDNN_OPTS).

    TensorFlow turns them on by default only on CPUs with AVX-512-class features; on an AVX2 CPU
    they still ran featx's backbones 1.3-1.7x faster (benchmarks/README.md). Results differ from
    the default kernels by float32 round-off only. It has to be set before TensorFlow is imported,
    which is why ``import featx`` calls this; it does nothing for the JAX and torch backends.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def quiet_backend_logs() -> None:
    """Silence TensorFlow's C++ start-up chatter unless the user set a level themselves."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def backend_name() -> str:
    import keras

    return keras.backend.backend()


@lru_cache(maxsize=None)
def accelerators() -> tuple[str, ...]:
    """Names of the accelerators the active Keras backend can use (empty on a CPU-only machine)."""
    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        return tuple(d.name for d in tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return tuple(str(d) for d in jax.devices() if d.platform != "cpu")
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return ()
    return ()


def resolve_device(requested: str = "auto") -> str:
    """Return "gpu" or "cpu" for what will actually compute; refuse a GPU request without one.

    "auto" uses a GPU when the backend sees one. "cpu" on a machine with a GPU is honoured only if
    the process was started with the GPU hidden (CUDA_VISIBLE_DEVICES=""), because backends
    place work on the GPU by default and cannot be moved after initialisation.
    """
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    gpus = accelerators()
    if requested == "gpu" and not gpus:
        raise DeviceError(
            f"a GPU was asked for, but the Keras backend {backend_name()!r} sees none "
            "(check the driver, CUDA_VISIBLE_DEVICES and that the backend was installed with GPU "
            "support); featx does not fall back to the CPU silently — use --device cpu or auto"
        )
    if requested == "cpu" and gpus:
        raise DeviceError(
            "--device cpu was asked for but the backend already sees a GPU; start the process "
            "with CUDA_VISIBLE_DEVICES='' to run on the CPU"
        )
    return "gpu" if gpus else "cpu"


def versions() -> dict[str, str]:
    """Versions recorded in every store and classifier file, for reproducibility."""
    import h5py
    import keras
    import numpy
    import sklearn

    from featx import __version__

    out = {
        "featx": __version__,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "h5py": h5py.__version__,
    }
    # Only report TensorFlow when it is the backend or already imported: importing it costs seconds.
    if out["keras_backend"] == "tensorflow" or "tensorflow" in sys.modules:
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    if out["keras_backend"] == "jax":
        import jax

        out["jax"] = jax.__version__
    if out["keras_backend"] == "torch":
        import torch

        out["torch"] = torch.__version__
    return out
