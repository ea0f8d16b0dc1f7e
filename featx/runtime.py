"""What featx runs on: the Keras backend, the device it computes on, and library versions.

Kept apart from the model code so that importing it is cheap until a question is actually asked;
the backend (and TensorFlow in particular) is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import tempfile
from functools import lru_cache
from typing import Iterator

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


# Lines the native libraries print to stderr while the backend starts, whatever
# TF_CPP_MIN_LOG_LEVEL says: absl logs written before absl::InitializeLog() ignore it
# (tensorflow/tensorflow#100442). Info lines ("I0000 … port.cc:153] oneDNN custom operations are
# on…", "cudart_stub.cc … Could not find cuda drivers…") and the few warnings and errors that mean
# "no GPU here" on a healthy CPU run. Every other line is shown.
_NATIVE_CHATTER = re.compile(
    rb"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] "  # absl info line
    rb"|\d{4}-\d\d-\d\d [\d:.]+: I \S+\] "  # TensorFlow's older info line
    rb"|To enable the following instructions: .* rebuild TensorFlow"  # 2nd line of cpu_feature_guard's
    rb"|.*(?:failed call to cuInit|Unable to register cu(?:DNN|FFT|BLAS) factory"
    rb"|TF-TRT Warning: Could not find TensorRT|computation placer already registered))"
)


def is_native_chatter(line: bytes) -> bool:
    """True for a start-up line of the backend's native libraries that says nothing to a user."""
    return _NATIVE_CHATTER.match(line) is not None


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Collect what is written to file descriptor 2 (by C++ too), then replay all but the chatter.

    Only around the backend's start-up (a bounded window), so a crash later still reaches stderr
    directly. Lines from Python inside the window are replayed in order after it.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not is_native_chatter(line)]
            if kept:
                os.write(2, b"".join(kept))


@lru_cache(maxsize=None)
def load_backend() -> str:
    """Import Keras and its backend and find the devices, once, without the native start-up chatter.

    Commands that run a model call this first; commands that do not (train, evaluate of a .skops
    classifier, info) never import the backend at all. Returns the backend's name.
    """
    with native_stderr_filtered():
        import keras

        accelerators()
        return keras.backend.backend()


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


def configured_backend() -> str:
    """The Keras backend this process uses or will use, without importing Keras (seconds with TF).

    Keras' own rule: KERAS_BACKEND, else the "backend" of $KERAS_HOME/keras.json, else tensorflow.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions recorded in every store and classifier file, for reproducibility.

    Read from the installed packages' metadata, so recording them imports no backend.
    """
    from featx import __version__

    out = {
        "featx": __version__,
        "python": platform.python_version(),
        "keras": _installed_version("keras"),
        "keras_backend": configured_backend(),
        "numpy": _installed_version("numpy"),
        "scikit-learn": _installed_version("scikit-learn"),
        "h5py": _installed_version("h5py"),
    }
    backend_package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(out["keras_backend"])
    if backend_package:
        out[backend_package] = _installed_version(backend_package)
    if "tensorflow" in sys.modules and "tensorflow" not in out:
        out["tensorflow"] = _installed_version("tensorflow")
    return out
