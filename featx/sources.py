"""Where images come from: class folders, split folders, CSV manifests or a list of paths → items.

An :class:`ImageSet` is the list of :class:`Item` (path, label, split) that one extraction reads.
Nothing here opens an image; decoding is :mod:`featx.decode`'s job.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "test": "test", "testing": "test"}


class SourceError(ValueError):
    """The image set cannot be read as given (layout, manifest or arguments)."""


@dataclass(frozen=True)
class Item:
    path: str  # the file to read
    relpath: str  # what the store records: relative to the set's root (POSIX separators)
    label: str | None  # class name, None when unlabelled
    split: str | None  # "train" / "validation" / "test", None until assigned


@dataclass
class ImageSet:
    items: list[Item]
    root: str | None
    layout: str  # "class_folders", "split_folders", "csv", "paths"
    label_names: list[str]
    split_method: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # files not taken, with why (non-image extension...)

    @property
    def has_splits(self) -> bool:
        return all(item.split is not None for item in self.items)

    def split_counts(self) -> dict[str, int]:
        return dict(Counter(item.split or "" for item in self.items))


def _display(path: str) -> str:
    """A file name as text that is always valid UTF-8 (undecodable bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(top: Path, ignored: list[str]) -> list[str]:
    """Every image-named file under `top`, sorted, following symlinks without looping forever."""
    found: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symlink loop or a second link to a folder already walked
            ignored.append(f"{_display(dirpath)}: folder already visited (symlink loop)")
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if _is_image_name(name):
                found.append(full)
            else:
                ignored.append(f"{_display(full)}: not an image file name")
    return found


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def from_directory(root: str | os.PathLike) -> ImageSet:
    """Read ``root/<class>/…`` or ``root/{train,validation,test}/<class>/…`` (Keras' layouts)."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise SourceError(f"{str(root_path)!r} is not a directory")
    subdirs = _class_dirs(root_path)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    ignored: list[str] = []
    items: list[Item] = []
    stray = [p.name for p in root_path.iterdir() if p.is_file() and _is_image_name(p.name)]
    if split_dirs:
        others = [d.name for d in subdirs if d not in split_dirs]
        if others:
            raise SourceError(
                f"{root_path} mixes split folders ({', '.join(d.name for d in split_dirs)}) with "
                f"other folders ({', '.join(others)}); expected only train/, validation/, test/"
            )
        layout = "split_folders"
        groups = [(SPLIT_ALIASES[d.name.lower()], d) for d in split_dirs]
    else:
        layout = "class_folders"
        groups = [(None, root_path)]
    for split, folder in groups:
        stray += [f"{folder.name}/{p.name}" for p in folder.iterdir()
                  if split and p.is_file() and _is_image_name(p.name)]
        for class_dir in _class_dirs(folder):
            for path in walk_images(class_dir, ignored):
                rel = Path(path).relative_to(root_path).as_posix()
                items.append(Item(path, _display(rel), _display(class_dir.name), split))
    ignored += [f"{_display(name)}: image outside any class folder" for name in stray]
    if not items:
        raise SourceError(
            f"no images found in {root_path}: expected class folders (root/<class>/*.jpg), optionally "
            f"under train/, validation/, test/ (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    labels = sorted({item.label for item in items if item.label is not None})
    method = {"method": "folders"} if layout == "split_folders" else {}
    return ImageSet(items, str(root_path.resolve()), layout, labels, method, ignored)


def from_csv(manifest: str | os.PathLike, *, allow_outside_root: bool = False) -> ImageSet:
    """Read a CSV manifest with a header ``path,label[,split]``; relative paths are relative to it."""
    manifest_path = Path(manifest).expanduser()
    root = manifest_path.resolve().parent
    try:
        with open(manifest_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            columns = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    except FileNotFoundError:
        raise SourceError(f"manifest {str(manifest_path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"manifest {manifest_path} is not UTF-8 text ({exc})") from None
    if not rows:
        raise SourceError(f"manifest {manifest_path} has no rows (expected a header path,label[,split])")
    if "path" not in columns or "label" not in columns:
        raise SourceError(
            f"manifest {manifest_path} needs a header with columns path,label[,split]; found {columns}"
        )
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        if not row.get("path"):
            raise SourceError(f"{manifest_path}:{lineno}: empty path")
        if not row.get("label"):
            raise SourceError(f"{manifest_path}:{lineno}: empty label for {row['path']!r}")
        full = (root / row["path"]).resolve() if not os.path.isabs(row["path"]) else Path(row["path"]).resolve()
        try:
            rel = full.relative_to(root).as_posix()
        except ValueError:
            if not allow_outside_root:
                raise SourceError(
                    f"{manifest_path}:{lineno}: path {row['path']!r} is outside the manifest's folder "
                    f"{root}; refused (pass allow_outside_root=True / --allow-outside-root to accept)"
                ) from None
            rel = full.as_posix()
        if rel in seen:
            raise SourceError(f"{manifest_path}:{lineno}: {row['path']!r} duplicates line {seen[rel]}")
        seen[rel] = lineno
        split = row.get("split") or None
        if split is not None:
            if split.lower() not in SPLIT_ALIASES:
                raise SourceError(
                    f"{manifest_path}:{lineno}: unknown split {split!r} (use train, validation or test)"
                )
            split = SPLIT_ALIASES[split.lower()]
        items.append(Item(str(full), rel, row["label"], split))
    has_split_col = "split" in columns
    if has_split_col and any(item.split is None for item in items):
        raise SourceError(f"manifest {manifest_path} has a split column but some rows leave it empty")
    labels = sorted({item.label for item in items})
    method = {"method": "manifest"} if has_split_col else {}
    return ImageSet(items, str(root), "csv", labels, method)


def from_paths(paths: Iterable[str | os.PathLike], labels: Sequence[str] | None = None) -> ImageSet:
    """A plain list of image files (labels optional); the store records absolute paths."""
    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    if labels is not None and len(labels) != len(paths):
        raise SourceError(f"{len(paths)} paths but {len(labels)} labels")
    items = [
        Item(p, _display(p), None if labels is None else str(labels[i]), None) for i, p in enumerate(paths)
    ]
    names = sorted({item.label for item in items if item.label is not None})
    return ImageSet(items, None, "paths", names)


def load_source(data: str | os.PathLike | Sequence[str], *, allow_outside_root: bool = False) -> ImageSet:
    """Dispatch on what `data` is: a folder, a .csv manifest, or a sequence of paths."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if path.is_dir():
            return from_directory(path)
        if path.suffix.lower() == ".csv":
            return from_csv(path, allow_outside_root=allow_outside_root)
        if not path.exists():
            raise SourceError(f"{str(path)!r} does not exist")
        return from_paths([path])
    return from_paths(list(data))


def _rank(seed: int, relpath: str) -> str:
    return hashlib.sha256(f"{seed}:{relpath}".encode("utf-8", "surrogateescape")).hexdigest()


def assign_splits(
    image_set: ImageSet, *, validation_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> ImageSet:
    """Give every item a split: stratified per class, seeded, stable when files are added.

    Within each class, items are ordered by a seeded hash of their relative path and the first
    ``round(n * fraction)`` go to validation (then test). Hashing rather than shuffling means an
    image keeps its split when other images are added, so train and evaluate never overlap across
    incremental runs. Sets that already have splits (folders, manifest) are returned unchanged.
    """
    if image_set.has_splits:
        return image_set
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise SourceError("validation and test fractions must be in [0, 1) and sum to less than 1")
    by_class: dict[str | None, list[int]] = defaultdict(list)
    for i, item in enumerate(image_set.items):
        by_class[item.label].append(i)
    splits: list[str] = ["train"] * len(image_set.items)
    for indices in by_class.values():
        ordered = sorted(indices, key=lambda i: _rank(seed, image_set.items[i].relpath))
        n_val = int(round(len(ordered) * validation_fraction))
        n_test = int(round(len(ordered) * test_fraction))
        for i in ordered[:n_val]:
            splits[i] = "validation"
        for i in ordered[n_val:n_val + n_test]:
            splits[i] = "test"
    items = [replace(item, split=s) for item, s in zip(image_set.items, splits)]
    method = {"method": "stratified-hash", "validation_fraction": validation_fraction,
              "test_fraction": test_fraction, "seed": seed}
    return replace(image_set, items=items, split_method=method)
