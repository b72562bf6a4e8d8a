"""Scan an image folder into honest splits: classes, (path, label) samples per split, and the files skipped.

Layouts:
- root/train/<class>/ + root/{val,valid,validation}/<class>/ (+ root/test/<class>/): val chooses checkpoints,
  test is only ever evaluated;
- root/train/<class>/ (+ root/test/<class>/) without a val folder: val is carved from train (seeded, stratified,
  `val_fraction`);
- root/<class>/: val (`val_fraction`) and, when `test_fraction` > 0, test are carved from the one folder.
A test split that is not a folder is carved from the training images by `test_fraction` (default 0: none).

Links are followed only while they stay inside root: a split or class folder, or a file, whose real path leaves
root is refused (split folders: an error, since silently dropping a split would change what is measured) or skipped
and listed; broken links and symlink loops are listed too.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from tlkit.data.images import is_image_name
from tlkit.data.preprocessing import ImageGeometryError, check_geometry
from tlkit.data.settings import DEFAULT_SEED, DEFAULT_VAL_FRACTION
from tlkit.errors import DataError, DataNotFoundError, did_you_mean

log = logging.getLogger(__name__)

TRAIN_SPLIT_NAME = "train"
VAL_SPLIT_NAMES = ("val", "valid", "validation")
TEST_SPLIT_NAME = "test"
LINK_OUTSIDE = "symlink leaving the data folder (not followed)"
STREAM_MANIFEST = "tlkit_stream.json"  # what `tlkit data optimize` writes last into a stream folder

Sample = tuple[str, int]  # multi-label data: (path, tuple of sorted class indices, possibly empty)


@dataclass
class FolderScan:
    """What a data root holds: class names and (path, label) samples per split, plus files that were skipped.
    Multi-label data (from a table) has (path, (class indices...)) samples and multi_label=True."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    # "split" (train/ + val/), "carved" (train/ without val/: val carved from train), "single" (one folder of classes)
    layout: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (width, height), from the header
    test: list[Sample] = field(default_factory=list)  # evaluated once at the end, never used for selection
    multi_label: bool = False
    root: str | None = None  # the data root the sample paths lie under (None: a scan built by hand)
    curation: dict = field(default_factory=dict)  # data.exclude / data.relabel as applied (tlkit.data.curation)

    def data_root(self) -> str:
        """The folder sample paths are named relative to: the scanned root, or (a scan built by hand) the deepest
        folder holding every sample."""
        if self.root is not None:
            return self.root
        folders = {os.path.dirname(os.path.abspath(p)) for p, _ in (*self.train, *self.val, *self.test)}
        return os.path.commonpath(sorted(folders))


def relative_name(path: str | Path, root: str | Path) -> str:
    """`path` relative to the data root, with / separators: what a random choice about a file is keyed by, so the same
    images draw the same in a copied or moved folder, on any machine."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def leaves_root(path: Path, root: Path) -> bool:
    """True when `path` is a symlink whose target lies outside `root` (such links are never followed: they could
    point anywhere, and a folder copied elsewhere would silently change)."""
    if not path.is_symlink():
        return False
    return not Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))


def link_problem(path: Path) -> str | None:
    """Why a symlink that is not a readable file or folder cannot be used (None when it resolves)."""
    try:
        os.stat(path)
    except OSError as exc:
        return "symlink loop (never reaches a file)" if exc.errno == errno.ELOOP else "broken symlink (target missing)"
    return None


def read_header(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) for a usable image file, (None, reason) otherwise. Reads the header only: cheap,
    and catches empty and non-image files and decompression bombs without decoding them."""
    if not is_image_name(path):
        return None, "not an image file extension"
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        return None, "decompression bomb: refused from its header"
    except (UnidentifiedImageError, OSError) as exc:
        return None, f"unreadable: {type(exc).__name__}"
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:  # PIL only warns below 2x the limit
        return None, f"decompression bomb: {width}x{height} pixels, refused from its header"
    try:
        check_geometry(width, height)  # an extreme aspect ratio: a resize bomb
    except ImageGeometryError as exc:
        return None, str(exc)
    return (width, height), None


def class_dirs(folder: Path) -> list[Path]:
    """The class folders of a split folder (sorted; hidden ones ignored). A folder linked outside the data root is
    listed here too: the caller refuses or reports it (leaves_root), training and the doctor alike."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(class_dir: Path, skipped: list[tuple[str, str]], root: Path,
                 sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Image files below class_dir (recursive, sorted), their header sizes recorded in `sizes`. Non-images,
    unreadable headers, decompression bombs, broken or looping links and links leaving `root` are skipped and
    listed."""
    files = []
    for path in sorted(class_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
            continue
        if leaves_root(path, root):
            skipped.append((str(path), LINK_OUTSIDE))
            continue
        problem = link_problem(path) if path.is_symlink() else None
        if problem is not None:
            skipped.append((str(path), problem))
            continue
        if not path.is_file():
            continue
        size, reason = read_header(path)
        if reason is not None:
            skipped.append((str(path), reason))
            continue
        files.append(str(path))
        sizes[str(path)] = size
    return files


def _collect(folder: Path, classes: list[str], skipped: list[tuple[str, str]], root: Path,
             sizes: dict[str, tuple[int, int]]) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if leaves_root(class_dir, root):
            skipped.append((str(class_dir), LINK_OUTSIDE))
        elif class_dir.is_dir():
            samples += [(p, label) for p in _list_images(class_dir, skipped, root, sizes)]
    return samples


def _split_dir(root: Path, names: Sequence[str]) -> Path | None:
    """The first of root/<name> that is a folder; DataError when it is a link leaving root (refused, not skipped:
    dropping a split silently would change what is trained on or measured)."""
    for name in names:
        path = root / name
        if leaves_root(path, root):
            raise DataError(
                f"{path} is a symlink to {os.path.realpath(path)}, outside the data folder; tlkit does not follow "
                "links that leave data.root. Move or copy the folder inside it, or point data.root at a folder "
                "that contains both."
            )
        if path.is_dir():
            return path
    return None


def _existing_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        parent = root.parent
        hint = did_you_mean(root.name, [p.name for p in parent.iterdir()]) if parent.is_dir() else ""
        raise DataNotFoundError(
            f"Data folder {str(root)!r} does not exist.{hint} Point data.root at a folder of class subfolders "
            "(e.g. --set data.root=/path/to/images)."
        )
    refuse_stream(root)
    return root


def refuse_stream(root: Path) -> None:
    """A LitData stream (tlkit data optimize's output) read as an image folder would report 'no class folders'; say
    what it is instead, and where it can be read."""
    if (root / STREAM_MANIFEST).is_file():
        raise DataError(f"{root} is a stream written by tlkit data optimize, not an image folder: train on it with "
                        "data.source: litdata, predict with tlkit predict; point this command at the folder or table "
                        "the stream was written from")


def _check_extra_classes(folder: Path, train_dir: Path, classes: list[str]) -> None:
    extra = sorted({p.name for p in class_dirs(folder)} - set(classes))
    if extra:
        raise DataError(
            f"{folder} has classes missing from {train_dir}: {', '.join(extra)}. "
            f"Add training images for them or remove them from the {folder.name} folder."
        )


def scan_folder(root: str | Path, *, val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0,
                seed: int = DEFAULT_SEED) -> FolderScan:
    """Find classes and samples of each split under root; raises DataNotFoundError / DataError with the fix in one
    line. Splits that are not folders are carved from the training images (seeded, stratified)."""
    root = _existing_root(root)
    skipped: list[tuple[str, str]] = []
    sizes: dict[str, tuple[int, int]] = {}
    train_dir = _split_dir(root, (TRAIN_SPLIT_NAME,))
    val_dir = _split_dir(root, VAL_SPLIT_NAMES)
    test_dir = _split_dir(root, (TEST_SPLIT_NAME,))
    if train_dir is None and (val_dir or test_dir) is not None:
        raise DataError(
            f"{root} has {(val_dir or test_dir).name}/ but no train/ folder; add train/<class>/ images beside it, "
            "or point data.root at a folder of class subfolders."
        )
    source = train_dir or root
    classes = [p.name for p in class_dirs(source)]
    _check_classes(classes, source)
    for clash in case_clashes(classes):
        log.warning("class folders %s differ only in case: they are trained as different classes; merge them", clash)
    for folder in (val_dir, test_dir):
        if folder is not None:
            _check_extra_classes(folder, source, classes)
    samples = _collect(source, classes, skipped, root, sizes)
    train, val, test = stratified_split(
        samples, val_fraction=0.0 if val_dir else val_fraction, test_fraction=0.0 if test_dir else test_fraction,
        seed=seed, class_names=classes)
    if val_dir is not None:
        val = _collect(val_dir, classes, skipped, root, sizes)
    if test_dir is not None:
        test = _collect(test_dir, classes, skipped, root, sizes)
    layout = "split" if val_dir is not None else "carved" if train_dir is not None else "single"
    empty = [c for i, c in enumerate(classes) if not any(label == i for _, label in train)]
    if empty:
        raise DataError(f"No training images for class(es) {', '.join(empty)} under {root}; add images or remove the folders.")
    if not val:
        raise DataError(f"No validation images found under {root}; add images to the validation folder.")
    for path, reason in skipped:
        log.warning("skipped %s (%s)", path, reason)
    return FolderScan(classes=classes, train=train, val=val, layout=layout, skipped=skipped, sizes=sizes, test=test,
                      root=str(root))


def case_clashes(classes: list[str]) -> list[str]:
    """Class names equal but for case ("Bees == bees"): nearly always one class written two ways."""
    groups: dict[str, list[str]] = {}
    for name in classes:
        groups.setdefault(name.casefold(), []).append(name)
    return [" == ".join(names) for names in groups.values() if len(names) > 1]


def _check_classes(classes: list[str], folder: Path) -> None:
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(
            f"{folder} needs at least 2 class subfolders (found {found}); put each class's images in its own folder."
        )


def stratified_split(
    samples: Sequence[Sample], *, val_fraction: float, seed: int, test_fraction: float = 0.0,
    key: Callable[[Sample], int] | None = None, class_names: Sequence[str] | None = None,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Seeded per-class split into (train, val, test). Each class is shuffled once; round(n * val_fraction) images
    go to val (at least 1, leaving at least 1 to train), then round(n * test_fraction) to test (at least 1 when the
    fraction is > 0 and the class has images to spare). val does not depend on test_fraction, so a checkpoint's
    val split is re-created from (val_fraction, seed) alone. A fraction of 0 carves nothing.

    key: the stratum of a sample instead of its label (multi-label data); a stratum of one image stays in train.
    class_names: what the labels are called, for the error a class of one image gets (else its index).
    Samples are shuffled from their sorted order: paths under one root sort as their relative paths do, so a copy of
    the folder anywhere else is split the same."""
    by_class: dict[int, list[Sample]] = {}
    for sample in sorted(samples):
        by_class.setdefault(sample[1] if key is None else key(sample), []).append(sample)
    small = sorted(label for label, items in by_class.items() if len(items) < 2)
    if small and val_fraction > 0 and key is None:
        named = ", ".join(class_names[i] for i in small) if class_names else f"class indices {small}"
        raise DataError(
            f"Cannot split a class with fewer than 2 images into train and val ({named}); "
            "add images or provide train/ and val/ folders."
        )
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for label in sorted(by_class):
        items = by_class[label][:]
        if val_fraction == 0 and test_fraction == 0:
            train += items
            continue
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction))) if val_fraction > 0 else 0
        spare = len(items) - n_val - 1
        n_test = min(spare, max(1, round(len(items) * test_fraction))) if test_fraction > 0 else 0
        val += items[:n_val]
        test += items[n_val:n_val + n_test]
        train += items[n_val + n_test:]
    return sorted(train), sorted(val), sorted(test)
