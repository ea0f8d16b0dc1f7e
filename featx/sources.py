"""Where images come from: class folders, split folders, CSV manifests or a list of paths → items.

An :class:`ImageSet` is the list of :class:`Item` (path, label, split) that one extraction reads.
Nothing here opens an image; decoding is :mod:`featx.decode`'s job.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

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


def display_path(path: str) -> str:
    """A file name as text that is always valid UTF-8 (undecodable bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(top: Path, ignored: list[str]) -> list[str]:
    """Every image-named file under `top`, sorted, following symlinks without looping forever.

    What is not taken is said in `ignored`: non-image names, folders that cannot be listed (they
    would otherwise vanish silently: os.walk drops them) and symlinks back into a walked folder.
    """
    found: list[str] = []
    seen_dirs: dict[tuple[int, int], str] = {}

    def unlistable(err: OSError) -> None:
        where = display_path(err.filename) if err.filename else display_path(os.fspath(top))
        ignored.append(f"{where}: folder could not be read ({err.strerror or err}); its files were not taken")

    for dirpath, dirnames, filenames in os.walk(top, onerror=unlistable, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            unlistable(exc)
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        first = seen_dirs.get(key)
        if first is not None:
            if dirpath.startswith(first + os.sep):  # the link leads back to a folder above it
                ignored.append(f"{display_path(dirpath)}: symlink loop back to {display_path(first)}; not followed")
            else:
                ignored.append(f"{display_path(dirpath)}: a second link to the folder {display_path(first)}, "
                               "already read; not read twice")
            dirnames[:] = []
            continue
        seen_dirs[key] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if _is_image_name(name):
                found.append(full)
            else:
                ignored.append(f"{display_path(full)}: not an image file name")
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
                items.append(Item(path, display_path(rel), display_path(class_dir.name), split))
    ignored += [f"{display_path(name)}: image outside any class folder" for name in stray]
    if not items:
        raise SourceError(
            f"no images found in {root_path}: expected class folders (root/<class>/*.jpg), optionally "
            f"under train/, validation/, test/ (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    labels = sorted({item.label for item in items if item.label is not None})
    method = {"method": "folders"} if layout == "split_folders" else {}
    # _display: the store keeps the root as UTF-8 text, like the paths (h5py refuses undecodable names)
    return ImageSet(items, display_path(str(root_path.resolve())), layout, labels, method, ignored)


def _declared(label_names: Sequence[str] | None) -> set[str] | None:
    if label_names is None:
        return None
    if isinstance(label_names, str):  # "daisy,rose" would otherwise become a set of letters
        raise SourceError(f"label_names must be a list of class names, got the string {label_names!r}")
    declared = {str(x).strip() for x in label_names}
    if not declared or "" in declared:
        raise SourceError(f"the declared labels must be non-empty class names, got {list(label_names)!r}")
    return declared


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _read_manifest_text(manifest_path: Path) -> str:
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"manifest {str(manifest_path)!r} does not exist") from None
    except IsADirectoryError:
        raise SourceError(f"manifest {manifest_path} is a folder, not a CSV file") from None
    except OSError as exc:
        raise SourceError(f"cannot read manifest {manifest_path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")  # -sig: Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SourceError(
            f"{manifest_path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the manifest as "
            "UTF-8 (in Excel: CSV UTF-8)"
        ) from None


def from_csv(
    manifest: str | os.PathLike,
    *,
    allow_outside_root: bool = False,
    label_names: Sequence[str] | None = None,
) -> ImageSet:
    """Read a CSV manifest with a header ``path,label[,split]``; relative paths are relative to it.

    Other columns are ignored; a byte-order mark and CRLF line ends are fine. Every problem is a
    SourceError naming the manifest line: a missing or repeated column, a row with more fields than
    the header, an empty path or label, a URL, a label not among `label_names` (when given: the classes
    the set is declared to have, so a typo such as "diasy" is caught before hours of extraction), a
    path outside the manifest's folder (unless `allow_outside_root`), the same file twice, an
    unknown or missing split.
    """
    manifest_path = Path(manifest).expanduser()
    root = manifest_path.resolve().parent
    declared = _declared(label_names)
    where = str(manifest_path)
    records = _csv_records(_read_manifest_text(manifest_path), where)
    first = next(records, None)
    if first is None:
        raise SourceError(f"manifest {where} is empty (expected a header line path,label[,split], then rows)")
    header, columns = _manifest_header(first[1], f"{where}:{first[0]}")
    items: list[Item] = []
    seen: dict[str, tuple[int, str]] = {}  # rel path -> (line, label) where it was first listed
    for lineno, fields in records:
        at = f"{where}:{lineno}"
        path, label, split = _manifest_row(fields, header, columns, at, declared)
        full, rel = _manifest_file(path, root, at, allow_outside_root)
        if rel in seen:
            first_line, first_label = seen[rel]
            same = "with the same label" if first_label == label else f"with label {first_label!r}, here {label!r}"
            raise SourceError(f"{at}: {path!r} is the same file as line {first_line} ({same}); "
                              "list each image once")
        seen[rel] = (lineno, label)
        items.append(Item(str(full), rel, label, _split_name(split, path, at)))
    if not items:
        raise SourceError(f"manifest {where} has a header but no rows")
    names = sorted({item.label for item in items})
    method = {"method": "manifest"} if "split" in columns else {}
    return ImageSet(items, display_path(str(root)), "csv", names, method)


def _csv_records(text: str, where: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank CSV record."""
    # strict: an unbalanced quote is an error here, not a field that silently swallows the rest of the file
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    last_line = 0
    while True:
        try:
            fields = next(reader, None)
        except csv.Error as exc:
            # report where the bad record starts: an unclosed quote is only noticed at the end
            raise SourceError(f"{where}:{last_line + 1}: not valid CSV: {exc} (an unbalanced double quote?)") from None
        if fields is None:
            return
        lineno, last_line = last_line + 1, reader.line_num  # first line of this record
        if any(f.strip() for f in fields):
            yield lineno, fields


def _manifest_header(fields: list[str], at: str) -> tuple[list[str], dict[str, int]]:
    """The header's lower-cased names and each column's index; path and label are required."""
    header = [f.strip().lower() for f in fields]
    columns: dict[str, int] = {}
    for i, name in enumerate(header):
        if name and name in columns:
            raise SourceError(f"{at}: column {name!r} appears twice in the header {fields}")
        columns.setdefault(name, i)
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        hint = (" (it looks like data: add a header line path,label[,split] at the top)"
                if _is_image_name(fields[0].strip()) else "")
        raise SourceError(
            f"{at}: the header needs columns path,label[,split]; it has {fields}, "
            f"without {', '.join(missing)}{hint}"
        )
    return header, columns


def _manifest_row(
    fields: list[str], header: list[str], columns: dict[str, int], at: str, declared: set[str] | None
) -> tuple[str, str, str | None]:
    """A data row's (path, label, split as written; None without a split column), checked."""
    if len(fields) > len(header):
        raise SourceError(
            f"{at}: {len(fields)} fields but the header has {len(header)} "
            "(a comma inside a path or label? put that value in double quotes)"
        )
    row = {name: (fields[i].strip() if i < len(fields) else "") for name, i in columns.items()}
    path, label = row["path"], row["label"]
    if not path:
        raise SourceError(f"{at}: empty path")
    if _URL.match(path):
        raise SourceError(f"{at}: {path!r} is a URL; featx reads local files (download the images first)")
    if not label:
        raise SourceError(f"{at}: empty label for {path!r} (every row needs its class name)")
    if declared is not None and label not in declared:
        close = difflib.get_close_matches(label, sorted(declared), n=1)
        raise SourceError(
            f"{at}: unknown label {label!r} for {path!r}; the declared labels are "
            f"{', '.join(sorted(declared))}" + (f" (did you mean {close[0]!r}?)" if close else "")
        )
    return path, label, row.get("split")


def _manifest_file(path: str, root: Path, at: str, allow_outside_root: bool) -> tuple[Path, str]:
    """The resolved file a manifest path names, and its key: relative to ``root``, else absolute."""
    try:
        given = Path(path) if os.path.isabs(path) else root / path
        full = given.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # NUL byte, symlink loop...
        raise SourceError(f"{at}: invalid path {path!r}: {exc}") from None
    try:
        rel = full.relative_to(root).as_posix()
    except ValueError:
        if not allow_outside_root:
            via_link = Path(os.path.normpath(given)).is_relative_to(root)
            raise SourceError(
                f"{at}: path {path!r} is outside the manifest's folder {root}"
                + (f" (a symbolic link leads to {full})" if via_link else "")
                + "; refused (pass allow_outside_root=True / --allow-outside-root to accept)"
            ) from None
        rel = full.as_posix()
    return full, display_path(rel)


def _split_name(split: str | None, path: str, at: str) -> str | None:
    """A row's split in featx's words (train, validation, test); None without a split column."""
    if split is None:
        return None
    if not split:
        raise SourceError(f"{at}: empty split for {path!r} (the manifest has a split "
                          "column: every row needs train, validation or test)")
    if split.lower() not in SPLIT_ALIASES:
        raise SourceError(f"{at}: unknown split {split!r} (use train, validation or test)")
    return SPLIT_ALIASES[split.lower()]


def from_paths(paths: Iterable[str | os.PathLike], labels: Sequence[str] | None = None) -> ImageSet:
    """A plain list of image files (labels optional); the store records absolute paths."""
    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    if labels is not None and len(labels) != len(paths):
        raise SourceError(f"{len(paths)} paths but {len(labels)} labels")
    items = [
        Item(p, display_path(p), None if labels is None else str(labels[i]), None) for i, p in enumerate(paths)
    ]
    names = sorted({item.label for item in items if item.label is not None})
    return ImageSet(items, None, "paths", names)


def load_source(
    data: str | os.PathLike | Sequence[str],
    *,
    allow_outside_root: bool = False,
    label_names: Sequence[str] | None = None,
) -> ImageSet:
    """Dispatch on what `data` is: a folder, a .csv manifest, or a sequence of paths.

    `label_names`, when given, declares the classes: a class folder or manifest label not among
    them is a SourceError (a typo'd folder name would otherwise silently become a new class).
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if path.is_dir():
            image_set = from_directory(path)
            declared = _declared(label_names)
            unknown = [] if declared is None else sorted(set(image_set.label_names) - declared)
            if unknown:
                raise SourceError(
                    f"{path}: class folder(s) {', '.join(map(repr, unknown))} are not among the declared "
                    f"labels {', '.join(sorted(declared))}"
                )
            return image_set
        if path.suffix.lower() == ".csv":
            return from_csv(path, allow_outside_root=allow_outside_root, label_names=label_names)
        if not path.exists():
            raise SourceError(f"{str(path)!r} does not exist")
        return from_paths([path])
    return from_paths(list(data))


def seeded_rank(key: str, seed: int) -> str:
    """Sort key for a seeded, reproducible order of items: the sha256 (hex) of ``f"{seed}:{key}"``.

    An item's rank depends only on its own key (a relative path) and the seed, never on the other items or
    their order, so adding files does not reorder the rest. Sorting by it gives the stratified splits of
    :func:`assign_splits` and the SGD search's held-out rows (``featx.linear.sgd._holdout_rows``); changing
    it would move the images of existing stores between splits.
    """
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogateescape")).hexdigest()


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
        ordered = sorted(indices, key=lambda i: seeded_rank(image_set.items[i].relpath, seed))
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
