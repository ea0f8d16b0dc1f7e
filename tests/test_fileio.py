"""featx.fileio: the one crash-safe replace (temporary name, fsync, os.replace, folder fsync)."""

import pytest

from featx.fileio import atomic_output, replace_atomically, write_bytes_atomically


def test_write_bytes_atomically_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.skops"
    target.write_bytes(b"old")
    write_bytes_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.skops"]


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target, suffix=".tmp.keras") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.keras") and tmp.name.startswith(".")
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_replace_atomically_moves_the_file(tmp_path):
    (tmp_path / ".part").write_bytes(b"x")
    replace_atomically(tmp_path / ".part", tmp_path / "final")
    assert (tmp_path / "final").read_bytes() == b"x" and not (tmp_path / ".part").exists()
