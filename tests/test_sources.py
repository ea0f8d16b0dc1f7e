"""Image sets: class folders, split folders, CSV manifests, path lists and the seeded split."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from conftest import make_flower_set
from featx.sources import SourceError, assign_splits, from_csv, from_directory, from_paths, load_source


def test_class_folders(tmp_path):
    root = make_flower_set(tmp_path / "d", classes=("daisy", "rose"), n=5)
    (root / "notes.txt").write_text("hello")
    (root / "daisy" / ".DS_Store").write_text("x")
    (root / "stray.jpg").write_bytes((root / "daisy").iterdir().__next__().read_bytes())
    s = from_directory(root)
    assert s.layout == "class_folders" and s.label_names == ["daisy", "rose"]
    assert len(s.items) == 10 and all(i.split is None for i in s.items)
    assert all(i.relpath.startswith(i.label + "/") for i in s.items)
    assert any("outside any class folder" in msg for msg in s.ignored)


def test_split_folders_with_val_alias(tmp_path):
    root = make_flower_set(tmp_path / "d", classes=("daisy", "rose"), splits={"train": (4, 0), "val": (2, 4)})
    s = from_directory(root)
    assert s.layout == "split_folders" and s.has_splits
    assert s.split_counts() == {"train": 8, "validation": 4}
    (root / "extra").mkdir()
    with pytest.raises(SourceError, match="mixes split folders"):
        from_directory(root)


def test_empty_or_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no images found"):
        from_directory(tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        load_source(tmp_path / "missing")


def test_symlink_loop_does_not_hang(tmp_path):
    root = make_flower_set(tmp_path / "d", classes=("daisy",), n=3)
    os.symlink(root / "daisy", root / "daisy" / "loop")
    s = from_directory(root)
    assert len(s.items) == 3
    assert any("symlink loop" in msg for msg in s.ignored)


def test_csv_manifest(tmp_path):
    root = make_flower_set(tmp_path / "d", classes=("daisy", "rose"), n=3)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    lines = ["path,label,split"] + [f"{f},{f.split('/')[0]},{'train' if i % 2 else 'val'}" for i, f in enumerate(files)]
    (root / "m.csv").write_text("\n".join(lines))
    s = load_source(root / "m.csv")
    assert s.layout == "csv" and s.has_splits and s.label_names == ["daisy", "rose"]
    assert Counter(i.split for i in s.items) == {"train": 3, "validation": 3}


@pytest.mark.parametrize("content,message", [
    ("file,label\na.jpg,x\n", "needs a header"),
    ("path,label\n", "no rows"),
    ("path,label\na.jpg,\n", "empty label"),
    ("path,label\na.jpg,x\na.jpg,y\n", "duplicates line 2"),
    ("path,label,split\na.jpg,x,holdout\n", "unknown split"),
    ("path,label\n../outside.jpg,x\n", "outside the manifest's folder"),
])
def test_csv_manifest_errors(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(SourceError, match=message):
        from_csv(tmp_path / "m.csv")


def test_csv_outside_root_allowed_when_asked(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("path,label\n../outside.jpg,x\n")
    s = from_csv(tmp_path / "sub" / "m.csv", allow_outside_root=True)
    assert s.items[0].relpath.endswith("outside.jpg")


def test_seeded_stratified_split_is_stable_when_files_are_added(tmp_path):
    root = make_flower_set(tmp_path / "d", classes=("daisy", "rose"), n=10)
    a = assign_splits(from_directory(root), validation_fraction=0.3, seed=1)
    b = assign_splits(from_directory(root), validation_fraction=0.3, seed=1)
    assert [i.split for i in a.items] == [i.split for i in b.items]  # deterministic
    per_class = Counter((i.label, i.split) for i in a.items)
    assert per_class[("daisy", "validation")] == 3 and per_class[("rose", "validation")] == 3
    c = assign_splits(from_directory(root), validation_fraction=0.3, seed=2)
    assert [i.split for i in a.items] != [i.split for i in c.items]  # the seed matters
    assert a.split_method == {"method": "stratified-hash", "validation_fraction": 0.3, "test_fraction": 0.0, "seed": 1}
    with pytest.raises(SourceError):
        assign_splits(from_directory(root), validation_fraction=0.7, test_fraction=0.4)


def test_path_list(tmp_path):
    root = make_flower_set(tmp_path / "d", classes=("daisy",), n=2)
    files = sorted(root.rglob("*.jpg"))
    s = from_paths(files, labels=["a", "b"])
    assert s.layout == "paths" and [i.label for i in s.items] == ["a", "b"]
    with pytest.raises(SourceError, match="2 paths but 1 labels"):
        from_paths(files, labels=["a"])
