"""The Dask side of featx: which cluster (``local``, ``local:N``, a scheduler address), starting a
local one (one worker per GPU or core), and connecting to it. Dask is imported only when a cluster is used."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from featx import pipeline

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

INSTALL_HINT = "pip install 'featx[dask]'"


class DaskUnavailable(RuntimeError):
    """A cluster was asked for but Dask distributed is not installed."""


def _require_dask():
    try:
        import distributed
    except ImportError as exc:
        raise DaskUnavailable(
            f"--cluster needs Dask distributed, which is not installed ({exc}); install it with {INSTALL_HINT} "
            "(or use --shard i/N and `featx merge`, which need no Dask)"
        ) from None
    return distributed


@dataclass(frozen=True)
class ClusterSpec:
    """``local`` / ``local:N`` (a LocalCluster started here) or a scheduler address."""

    address: str | None = None
    n_workers: int | None = None

    def __str__(self) -> str:
        if self.address:
            return self.address
        return "local" if self.n_workers is None else f"local:{self.n_workers}"


def parse_cluster(spec: str | ClusterSpec) -> ClusterSpec:
    """'local' | 'local:N' | 'tcp://HOST:PORT' (any Dask scheme://)."""
    if isinstance(spec, ClusterSpec):
        return spec
    text = str(spec).strip()
    if text == "local":
        return ClusterSpec()
    m = re.fullmatch(r"local:(\d+)", text)
    if m:
        if int(m.group(1)) < 1:
            raise ValueError(f"--cluster {text}: need at least one worker")
        return ClusterSpec(n_workers=int(m.group(1)))
    if re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", text):
        return ClusterSpec(address=text)
    raise ValueError(f"--cluster expects local, local:N or a scheduler address such as tcp://HOST:8786, got {spec!r}")


def local_gpus() -> list[str]:
    """The GPUs of this machine, as CUDA device ids (CUDA_VISIBLE_DEVICES if set, else nvidia-smi -L)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]



def start_local_cluster(n_workers: int | None = None) -> "LocalCluster":
    """A LocalCluster on loopback: worker processes with one task thread each (default: one per GPU, else one
    per core), each given its share of the cores for TensorFlow's thread pool and for decoding."""
    distributed = _require_dask()
    gpus = local_gpus()
    cores = pipeline.default_workers()
    n = n_workers or len(gpus) or cores
    share = max(1, cores // n)
    # TensorFlow sizes its pool to the whole machine otherwise: N workers would each claim every core
    env = {"TF_NUM_INTRAOP_THREADS": str(share), "FEATX_DECODE_WORKERS": str(share)}
    if gpus:
        env["FEATX_LOCAL_GPUS"] = ",".join(gpus)  # read by _pin_gpu in each worker
    import dask

    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap threshold:
    # every batch's activations are then mmap'd and unmapped afresh; measured here, that made the CPU model
    # ~17% slower (113 vs 134 images/s, mobilenet_0.25, batch 64). None unsets it (read once per Nanny).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                        dashboard_address=None, env=env)


@contextmanager
def connect(cluster: "str | ClusterSpec | Client", *, wait_seconds: float = 60) -> Iterator["Client"]:
    """A dask.distributed Client: to a LocalCluster started here (``local[:N]``, closed on exit), to a
    running scheduler (an address), or the Client passed in (left open)."""
    distributed = _require_dask()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    spec = parse_cluster(cluster)
    if spec.address is None:
        with start_local_cluster(spec.n_workers) as local, distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(spec.address, timeout=f"{int(wait_seconds)}s")
    except OSError as exc:
        raise OSError(f"cannot reach the Dask scheduler at {spec.address} ({exc}); start it with "
                      "`dask scheduler` and check the address and firewall") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=wait_seconds)
        except (TimeoutError, OSError):
            raise RuntimeError(f"no Dask worker joined the scheduler at {spec.address} within {wait_seconds:.0f} s; "
                               f"start workers with `dask worker {spec.address} --nworkers 1 --nthreads 1`") from None
        yield client

