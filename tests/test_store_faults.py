"""Faults during a real extraction other than a kill: a second writer, readers during the write, a full
disk, and the model running out of memory. Each leaves a readable store and a rerun that completes it."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TEST_SIZE, make_photo_set, run_main
from featx.extract import extract
from featx.oom import OutOfMemory, is_out_of_memory
from featx.store import FeatureStore, StoreFull, StoreWriter
from storecheck import (assert_complete, assert_sane, cli_args, features_by_path, leftovers, parts, relpaths,
                        rerun, start_cli)

BATCH = 4
CLASSES = ("cat", "coffee", "rocket")


def _wait_for_parts(proc: subprocess.Popen, store: Path, n: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while len(parts(store)) < n:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"extraction ended before {n} batches were committed: {proc.communicate()[1][-3000:]}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, backbone):
    """60 real photos (15 batches of 4) and a clean run's features of them."""
    tmp = tmp_path_factory.mktemp("faults")
    data = make_photo_set(tmp / "photos", classes=CLASSES, n=20)
    extract(data, tmp / "clean.h5", backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    return data, features_by_path(tmp / "clean.h5")


@pytest.mark.large
# -- concurrent writers and readers ------------------------------------------------------------------
def test_second_writer_refused_and_readers_read_while_the_first_writes(tmp_path, photos):
    data, clean = photos
    allowed = relpaths(data)
    store = tmp_path / "s.h5"
    first = start_cli(data, store)  # a process of its own: it is stopped (SIGSTOP) while holding the lock
    _wait_for_parts(first, store, 2)
    os.kill(first.pid, signal.SIGSTOP)  # hold the first writer mid-run (it keeps its lock) while we look
    try:
        committed = assert_sane(store, allowed)  # a reader opens while the writer holds the lock
        assert len(committed) >= 2 * BATCH
        info = run_main("info", str(store), "--json")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["n_images"] == len(committed)
        before = parts(store)
        second = run_main(*cli_args(data, store))  # a real second extraction into the same store
        assert second.returncode == 1, second.stderr
        assert "being written by another featx process" in second.stderr
        assert "Traceback" not in second.stderr
        assert parts(store) == before and assert_sane(store, allowed) == committed  # it wrote nothing
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # readers keep opening while the first writer finishes and consolidates: never an error, a duplicate
    # or a row that disappears
    seen = []
    while first.poll() is None:
        seen.append(len(assert_sane(store, allowed)))
    out, err = first.communicate()
    assert first.returncode == 0, err
    assert seen and seen == sorted(seen), seen
    assert json.loads(out)["n_extracted"] == len(allowed)
    assert_complete(store, allowed, clean)


# -- disk full ---------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB file system (tmpfs) that the test fills up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail("the disk-full tests mount a 4 MB tmpfs to run out of space for real; that needs root "
                    f"(as in CI and the dev container): {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _fill(path: Path) -> None:
    """Write `path` until the file system has no block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_disk_full_mid_run_is_a_clear_error_then_rerun_completes(tmp_path, small_disk, photos, backbone):
    data, clean = photos
    allowed = relpaths(data)
    store = small_disk / "s.h5"
    proc = start_cli(data, store)  # a process of its own, stopped while the disk is filled under it
    _wait_for_parts(proc, store, 2)
    os.kill(proc.pid, signal.SIGSTOP)
    _fill(small_disk / "filler")  # the disk runs out mid-run, wherever the writer happens to be
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert "no space left on device" in err and str(store) in err and "rerun" in err
    assert "Traceback" not in err
    committed = assert_sane(store, allowed)  # whatever was committed is readable
    assert 2 * BATCH <= len(committed) < len(allowed)
    assert not leftovers(store)  # no half-written part or store copy eats the space
    (small_disk / "filler").unlink()  # free space, rerun: it continues where the full disk stopped it
    summary = rerun(data, store, backbone)
    assert summary.n_cached == len(committed) and summary.n_extracted == len(allowed) - len(committed)
    assert_complete(store, allowed, clean)


def test_disk_full_while_merging_keeps_the_journal(tmp_path, small_disk, photos, backbone, monkeypatch):
    data, clean = photos
    allowed = relpaths(data)
    store = small_disk / "s.h5"
    real = StoreWriter.consolidate

    def fill_then_consolidate(self, *args, **kwargs):
        if not (small_disk / "filler").exists():
            _fill(small_disk / "filler")  # the disk is full just when the second copy is needed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "consolidate", fill_then_consolidate)
    message = f"no space left on device while merging 15 journal parts .* of store {re.escape(str(store))}"
    with pytest.raises(StoreFull, match=message):
        extract(data, store, backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    monkeypatch.undo()
    assert not leftovers(store) and len(parts(store)) == 15  # the copy is removed, the journal kept
    assert len(assert_sane(store, allowed)) == len(allowed)  # readers see every row through the journal
    (small_disk / "filler").unlink()
    summary = rerun(data, store, backbone)
    assert summary.n_extracted == 0 and summary.n_cached == len(allowed)
    assert_complete(store, allowed, clean)


# -- out of memory -------------------------------------------------------------------------------------
def _tf_oom(n: int) -> Exception:
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor with shape[{n},48,48,8]")


def _jax_oom(n: int) -> Exception:
    from jax.errors import JaxRuntimeError

    return JaxRuntimeError(f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate {n * 73728} bytes.")


def _torch_oom(n: int) -> Exception:
    import torch

    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n * 73728} bytes")


def _wrapped(n: int) -> Exception:
    try:
        raise _tf_oom(n)
    except Exception as exc:
        try:
            raise ValueError("Exception encountered when calling Functional.call()") from exc
        except ValueError as outer:
            return outer


@pytest.mark.parametrize("make", [
    _tf_oom, _jax_oom, _torch_oom,
    lambda n: RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), lambda n: MemoryError(), _wrapped,
], ids=["tensorflow", "jax", "torch", "torch-old", "host", "wrapped-by-keras"])
def test_out_of_memory_errors_are_recognised(make):
    assert is_out_of_memory(make(8))


@pytest.mark.parametrize("exc", [ValueError("bad shape"), RuntimeError("shape mismatch"), KeyError("out of memory"),
                                 OSError(errno.ENOSPC, "No space left on device")])
def test_other_errors_are_not_out_of_memory(exc):
    assert not is_out_of_memory(exc)


def test_out_of_memory_halves_the_batch_and_goes_on(tmp_path, backbone, monkeypatch, caplog):
    data = make_photo_set(tmp_path / "photos", classes=CLASSES, n=8)
    allowed = relpaths(data)
    extract(data, tmp_path / "clean.h5", backbone=backbone, batch_size=8, workers=1, progress=False)
    real, calls = backbone.predict, []

    def predict(pixels):  # an injected fault on the real model: batches over 2 exhaust "device memory"
        calls.append(len(pixels))
        if len(pixels) > 2:
            raise _tf_oom(len(pixels))
        return real(pixels)

    monkeypatch.setattr(backbone, "predict", predict)
    store = tmp_path / "s.h5"
    with caplog.at_level(logging.WARNING, logger="featx"):
        summary = extract(data, store, backbone=backbone, batch_size=8, workers=1, progress=False)
    assert "out of memory at batch 8, retrying with 4" in caplog.text
    assert "out of memory at batch 4, retrying with 2" in caplog.text
    assert summary.batch_size == 2 and summary.oom_backoffs == [[8, 4], [4, 2]]
    assert "out of memory at batch 8: continued with batch 4" in summary.format()
    assert calls[:2] == [8, 4] and set(calls[2:]) == {2}  # then one fixed shape at the new size
    assert summary.n_extracted == len(allowed)
    assert_complete(store, allowed, features_by_path(tmp_path / "clean.h5"))


def test_out_of_memory_at_batch_1_fails_clearly_and_keeps_what_was_committed(tmp_path, backbone, monkeypatch):
    data = make_photo_set(tmp_path / "photos", classes=CLASSES, n=8)
    allowed = relpaths(data)
    extract(data, tmp_path / "clean.h5", backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    real, calls = backbone.predict, []

    def predict(pixels):  # memory runs out for good after two batches
        calls.append(len(pixels))
        if len(calls) > 2:
            raise _jax_oom(len(pixels))
        return real(pixels)

    monkeypatch.setattr(backbone, "predict", predict)
    store = tmp_path / "s.h5"
    with pytest.raises(OutOfMemory, match="out of memory even at batch size 1"):
        extract(data, store, backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    assert calls == [4, 4, 4, 2, 1]
    assert len(assert_sane(store, allowed)) == 2 * BATCH  # the two batches computed are kept
    monkeypatch.undo()
    summary = rerun(data, store, backbone)
    assert summary.n_extracted == len(allowed) - 2 * BATCH
    assert_complete(store, allowed, features_by_path(tmp_path / "clean.h5"))


def test_other_model_errors_are_not_retried(tmp_path, backbone, monkeypatch):
    data = make_photo_set(tmp_path / "photos", classes=CLASSES[:1], n=4)
    calls = []

    def predict(pixels):
        calls.append(len(pixels))
        raise ValueError("a real bug, not memory")

    monkeypatch.setattr(backbone, "predict", predict)
    with pytest.raises(ValueError, match="a real bug"):
        extract(data, tmp_path / "s.h5", backbone=backbone, batch_size=BATCH, workers=1, progress=False)
    assert calls == [4]
    with FeatureStore(tmp_path / "s.h5") as fs:
        assert len(fs) == 0


# -- batch size from the free memory ---------------------------------------------------------------------
def test_auto_batch_size_follows_the_free_memory(backbone, monkeypatch):
    from featx import oom

    model = backbone.inference_model
    per_image = oom.activation_bytes_per_image(model)
    # MobileNet-0.25's widest activation: block 2's input, (side / 2)^2 x 16 channels (its zero-padded
    # copy is gone from the inference model: featx.fold merges the padding into the convolution)
    assert per_image == 3 * 4 * (TEST_SIZE // 2) ** 2 * 16
    size, why = oom.auto_batch_size(model, "cpu")  # this machine has GiBs free: the CPU cap
    assert size == 64 and "GiB free (MemAvailable" in why
    for free, expected in [(per_image * 4 * 10, 8), (per_image * 4 * 1, 1), (per_image, 1), (10 ** 15, 64)]:
        monkeypatch.setattr(oom, "free_memory_bytes", lambda device, free=free: (free, "test"))
        assert oom.auto_batch_size(model, "cpu")[0] == expected
    monkeypatch.setattr(oom, "free_memory_bytes", lambda device: (None, "unknown"))
    assert oom.auto_batch_size(model, "cpu") == (32, oom.auto_batch_size(model, "cpu")[1])
    assert "unknown" in oom.auto_batch_size(model, "cpu")[1]
    with pytest.raises(ValueError, match="'cpu' or 'gpu'"):
        oom.auto_batch_size(model, "tpu")
    monkeypatch.setattr(oom, "free_memory_bytes", lambda device: (10 ** 15, "test"))
    assert [oom.auto_batch_size(model, "gpu", n_images=n)[0] for n in (0, 1, 5, 300, 10 ** 6)] == [1, 1, 8, 512, 512]


def test_extract_defaults_to_an_automatic_batch_and_records_it(tmp_path, backbone, caplog):
    data = make_photo_set(tmp_path / "photos", classes=CLASSES, n=8)
    extract(data, tmp_path / "clean.h5", backbone=backbone, batch_size=8, progress=False)
    with caplog.at_level(logging.INFO, logger="featx"):
        summary = extract(data, tmp_path / "s.h5", backbone=backbone, progress=False)
    n = len(relpaths(data))  # 24: the CPU cap of 64 shrinks to 32, the power of two that holds them
    assert summary.batch_size == 32 and summary.n_extracted == n
    assert "batch size 32:" in caplog.text and "cap 32" in caplog.text
    # one padded batch of 64 gives the same features as batches of 8
    assert_complete(tmp_path / "s.h5", relpaths(data), features_by_path(tmp_path / "clean.h5"))
    for bad in (0, -1, "big", 2.5, True):
        with pytest.raises(ValueError, match="positive integer or 'auto'"):
            extract(data, tmp_path / "t.h5", backbone=backbone, batch_size=bad, progress=False)
