"""Image sets: class folders, split folders, CSV manifests, path lists and the seeded split."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

from conftest import make_photo_set
from featx.sources import (SourceError, assign_splits, from_csv, from_directory, from_paths, load_source,
                           seeded_rank)


def test_class_folders(tmp_path):
    root = make_photo_set(tmp_path / "d", classes=("cat", "coffee"), n=5)
    (root / "notes.txt").write_text("hello")
    (root / "cat" / ".DS_Store").write_text("x")
    (root / "stray.jpg").write_bytes((root / "cat").iterdir().__next__().read_bytes())
    s = from_directory(root)
    assert s.layout == "class_folders" and s.label_names == ["cat", "coffee"]
    assert len(s.items) == 10 and all(i.split is None for i in s.items)
    assert all(i.relpath.startswith(i.label + "/") for i in s.items)
    assert any("outside any class folder" in msg for msg in s.ignored)


def test_split_folders_with_val_alias(tmp_path):
    root = make_photo_set(tmp_path / "d", classes=("cat", "coffee"), splits={"train": (4, 0), "val": (2, 4)})
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
    root = make_photo_set(tmp_path / "d", classes=("cat",), n=3)
    os.symlink(root / "cat", root / "cat" / "loop")
    s = from_directory(root)
    assert len(s.items) == 3
    assert any("cat/loop: symlink loop back to" in msg for msg in s.ignored), s.ignored


def test_second_link_to_a_folder_is_read_once_and_said(tmp_path):
    root = make_photo_set(tmp_path / "d", classes=("cat",), n=2)
    shared = tmp_path / "shared_photos"
    shutil.copytree(root / "cat", shared)
    os.symlink(shared, root / "cat" / "a")
    os.symlink(shared, root / "cat" / "b")
    s = from_directory(root)
    assert len(s.items) == 4  # the 2 photos + the 2 shared ones, once
    assert any("cat/b: a second link to the folder" in msg and msg.endswith("not read twice")
               for msg in s.ignored), s.ignored


def test_unlistable_folder_is_reported_not_dropped(tmp_path, monkeypatch):
    # (For real, with mode 000 and a user who is refused, in test_faults' command-line run.)
    root = make_photo_set(tmp_path / "d", classes=("cat",), n=2)
    (root / "cat" / "private").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("private"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    s = from_directory(root)
    assert len(s.items) == 2
    assert any(m.endswith("cat/private: folder could not be read (Permission denied); its files were not taken")
               for m in s.ignored), s.ignored


def test_csv_manifest(tmp_path):
    root = make_photo_set(tmp_path / "d", classes=("cat", "coffee"), n=3)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    lines = ["path,label,split"] + [f"{f},{f.split('/')[0]},{'train' if i % 2 else 'val'}" for i, f in enumerate(files)]
    (root / "m.csv").write_text("\n".join(lines))
    s = load_source(root / "m.csv")
    assert s.layout == "csv" and s.has_splits and s.label_names == ["cat", "coffee"]
    assert Counter(i.split for i in s.items) == {"train": 3, "validation": 3}


@pytest.mark.parametrize("content,message", [
    # missing columns, or no header at all
    ("file,label\na.jpg,x\n", r"m.csv:1: the header needs columns path,label\[,split\]; .* without path$"),
    ("path\na.jpg\n", r"m.csv:1: .* without label$"),
    ("a.jpg,cat\nb.jpg,coffee\n", r"m.csv:1: .*it looks like data: add a header line"),
    ("path,label,label\na.jpg,x,y\n", r"m.csv:1: column 'label' appears twice"),
    # rows that do not fit the header
    ("path,label\na.jpg,x\nb.jpg,y,extra\n", r"m.csv:3: 3 fields but the header has 2 .*double quotes"),
    ("path,label\na.jpg\n", r"m.csv:2: empty label for 'a.jpg'"),
    ("path,label\n,x\n", r"m.csv:2: empty path"),
    ('path,label\n"a.jpg,x\nb.jpg,y\n', r"m.csv:2: not valid CSV: .*unbalanced double quote"),
    ("path,label\nhttps://example.com/a.jpg,x\n", r"m.csv:2: 'https://example.com/a.jpg' is a URL"),
    ('path,label\n"a\x00b.jpg",x\n', r"m.csv:2: invalid path"),
    # duplicates: the same file, however it is spelled
    ("path,label\na.jpg,x\na.jpg,x\n", r"m.csv:3: 'a.jpg' is the same file as line 2 \(with the same label\)"),
    ("path,label\nsub/a.jpg,x\n./sub/../sub/a.jpg,y\n",
     r"m.csv:3: .* same file as line 2 \(with label 'x', here 'y'\)"),
    # splits
    ("path,label,split\na.jpg,x,holdout\n", r"m.csv:2: unknown split 'holdout'"),
    ("path,label,split\na.jpg,x,train\nb.jpg,x,\n", r"m.csv:3: empty split for 'b.jpg'"),
    # empty manifests
    ("", r"m.csv is empty \(expected a header line"),
    ("\n  \n", r"m.csv is empty"),
    ("path,label\n", r"m.csv has a header but no rows"),
    # paths escaping the manifest's folder
    ("path,label\n../outside.jpg,x\n", r"m.csv:2: path '../outside.jpg' is outside the manifest's folder .*refused"),
    ("path,label\n/etc/passwd,x\n", r"m.csv:2: path '/etc/passwd' is outside"),
    ("path,label\nsub/../../x.jpg,x\n", r"m.csv:2: path 'sub/../../x.jpg' is outside"),
], ids=lambda v: None)
def test_csv_manifest_errors_name_the_line(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content, newline="")
    with pytest.raises(SourceError, match=message):
        from_csv(tmp_path / "m.csv")


def test_csv_line_numbers_count_blank_lines_crlf_and_quoted_newlines(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes(b'path,label\r\n\r\n"multi\r\nline.jpg",x\r\nb.jpg,x\r\nb.jpg,x\r\n')
    with pytest.raises(SourceError, match=r"m.csv:6: 'b.jpg' is the same file as line 5"):
        from_csv(m)


def test_csv_bom_crlf_quotes_and_extra_columns_are_fine(tmp_path):
    m = tmp_path / "m.csv"
    # Excel's "CSV UTF-8": byte-order mark, CRLF, quoted values; header case/spaces and an extra
    # column are tolerated.
    m.write_bytes("\ufeff Path ,LABEL,Split,notes\r\n"
                  '"a, b.jpg",cat,train,"said ""hi"""\r\n'
                  "c\u00e9.jpg, coffee ,val,\r\n".encode("utf-8"))
    s = from_csv(m)
    assert [(i.relpath, i.label, i.split) for i in s.items] == [("a, b.jpg", "cat", "train"),
                                                                 ("c\u00e9.jpg", "coffee", "validation")]
    assert s.label_names == ["cat", "coffee"] and s.split_method == {"method": "manifest"}


def test_csv_not_utf8_names_the_line(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"path,label\na.jpg,x\ncaf\xe9.jpg,x\n")
    with pytest.raises(SourceError, match=r"m.csv:3: not UTF-8 text .*0xe9"):
        from_csv(tmp_path / "m.csv")
    with pytest.raises(SourceError, match="is a folder"):
        from_csv(tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        from_csv(tmp_path / "nope.csv")


def test_csv_unknown_labels_against_declared_label_names(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.jpg,cat\nb.jpg,cta\n")
    assert from_csv(m).label_names == ["cat", "cta"]  # nothing declared: every label is a class
    with pytest.raises(SourceError, match=r"m.csv:3: unknown label 'cta' for 'b.jpg'; the declared labels "
                                          r"are cat, coffee \(did you mean 'cat'\?\)"):
        from_csv(m, label_names=["cat", "coffee"])
    with pytest.raises(SourceError, match=r"m.csv:3: unknown label 'cta'"):
        load_source(m, label_names=["cat", "coffee"])
    assert from_csv(m, label_names=["cat", "cta", "coffee"]).label_names == ["cat", "cta"]
    for bad in ("cat,coffee", [], ["cat", " "]):
        with pytest.raises(SourceError, match="label"):
            from_csv(m, label_names=bad)


def test_class_folders_against_declared_label_names(tmp_path):
    root = make_photo_set(tmp_path / "d", classes=("cat", "coffee"), n=1)
    assert load_source(root, label_names=["cat", "coffee", "rocket"]).label_names == ["cat", "coffee"]
    with pytest.raises(SourceError, match=r"class folder\(s\) 'coffee' are not among the declared labels cat"):
        load_source(root, label_names=["cat"])


def test_csv_symlink_out_of_the_folder_is_refused_unless_allowed(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(b"x")
    (tmp_path / "set").mkdir()
    os.symlink(outside, tmp_path / "set" / "imgs")
    (tmp_path / "set" / "m.csv").write_text("path,label\nimgs/a.jpg,x\n")
    with pytest.raises(SourceError, match=r"m.csv:2: path 'imgs/a.jpg' is outside .*a symbolic link leads to"):
        from_csv(tmp_path / "set" / "m.csv")
    s = from_csv(tmp_path / "set" / "m.csv", allow_outside_root=True)
    assert s.items[0].path == str(outside / "a.jpg") and s.items[0].relpath == (outside / "a.jpg").as_posix()


def test_csv_outside_root_allowed_when_asked(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text("path,label\n../outside.jpg,x\n")
    s = from_csv(tmp_path / "sub" / "m.csv", allow_outside_root=True)
    assert s.items[0].relpath.endswith("outside.jpg")


def test_seeded_stratified_split_is_stable_when_files_are_added(tmp_path):
    root = make_photo_set(tmp_path / "d", classes=("cat", "coffee"), n=10)
    a = assign_splits(from_directory(root), validation_fraction=0.3, seed=1)
    b = assign_splits(from_directory(root), validation_fraction=0.3, seed=1)
    assert [i.split for i in a.items] == [i.split for i in b.items]  # deterministic
    per_class = Counter((i.label, i.split) for i in a.items)
    assert per_class[("cat", "validation")] == 3 and per_class[("coffee", "validation")] == 3
    c = assign_splits(from_directory(root), validation_fraction=0.3, seed=2)
    assert [i.split for i in a.items] != [i.split for i in c.items]  # the seed matters
    assert a.split_method == {"method": "stratified-hash", "validation_fraction": 0.3, "test_fraction": 0.0, "seed": 1}
    with pytest.raises(SourceError):
        assign_splits(from_directory(root), validation_fraction=0.7, test_fraction=0.4)


@pytest.mark.parametrize("key, seed, expected", [
    ("cats/001.jpg", 0, "08766b9d1c7013b96d591d1c744dffdb104255d4def13209f5f13be510944af0"),
    ("dogs/ü 2.png", 42, "fbd519e4844e96cc14fa7b043a475e71858128bd7e4a99abd85352e2293505b6"),
    ("x/" + os.fsdecode(b"\xff.jpg"), 7, "70b431e0ab87bbbff3ee1210ecda66f3130a232ab303d5c6e795d36f701bfe01"),
])
def test_seeded_rank_is_pinned(key, seed, expected):
    """The rank behind every stored split and SGD holdout: if it changed, existing stores' images would move
    between train, validation and test (values computed by the rank featx used before it was shared)."""
    assert seeded_rank(key, seed) == expected


def test_path_list(tmp_path):
    root = make_photo_set(tmp_path / "d", classes=("cat",), n=2)
    files = sorted(root.rglob("*.jpg"))
    s = from_paths(files, labels=["a", "b"])
    assert s.layout == "paths" and [i.label for i in s.items] == ["a", "b"]
    with pytest.raises(SourceError, match="2 paths but 1 labels"):
        from_paths(files, labels=["a"])
