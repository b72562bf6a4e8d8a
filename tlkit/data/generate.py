"""Built-in datasets written as image folders, so the quickstart needs no download, and a multi-label set built
from any single-label folder (2x2 mosaics labelled with the classes they show)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import statistics
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from tlkit.errors import DataError
from tlkit.io import atomic_write

GENERATORS = ("digits",)
MOSAIC_SPLITS = ("train", "val", "test")


def write_digits(root: str | Path, *, size: int = 32) -> Path:
    """Write scikit-learn's bundled 8x8 digits (1,797 images) as `root/<digit>/<index>.png`, upscaled to `size`.

    Written to a temporary sibling folder and renamed into place, so an interrupted write never leaves half a dataset.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    if root.exists():
        return root
    digits = load_digits()
    with _written_atomically(root) as tmp:
        for index, (image, label) in enumerate(zip(digits.images, digits.target)):
            pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)  # digits are 0..16 intensities
            folder = tmp / str(label)
            folder.mkdir(exist_ok=True)
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(folder / f"{index:04d}.png")
    return root


@contextmanager
def _written_atomically(root: Path):
    """A temporary sibling folder, renamed to root when the block completes (removed if it does not), so an
    interrupted write never leaves half a dataset."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        yield tmp
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _tile(path: str, cell: int) -> Image.Image:
    """The image's centre square, resized to cell x cell (decoded as training decodes it)."""
    from tlkit.data.images import decode

    image = Image.fromarray(decode(path))
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square if side == cell else square.resize((cell, cell), Image.BICUBIC)


class _Decks:
    """Each class's images in a shuffled order, reshuffled when used up: every image is used about equally often."""

    def __init__(self, by_class: Mapping[int, list[str]], rng: random.Random):
        self.by_class, self.rng = by_class, rng
        self.decks: dict[int, list[str]] = {c: [] for c in by_class}

    def draw(self, label: int) -> str:
        if not self.decks[label]:
            self.decks[label] = self.rng.sample(self.by_class[label], len(self.by_class[label]))
        return self.decks[label].pop()


def _mosaic_labels(classes: list[int], rng: random.Random, grid: int, min_classes: int,
                   max_classes: int) -> list[int]:
    """Class of each of grid x grid cells: k distinct classes (k uniform in [min, max]), each at least once."""
    k = rng.randint(min(min_classes, len(classes)), min(max_classes, grid * grid, len(classes)))
    chosen = rng.sample(classes, k)
    cells = chosen + [rng.choice(chosen) for _ in range(grid * grid - k)]
    rng.shuffle(cells)
    return cells


def _write_split(samples: list, split: str, count: int, out: Path, names: list[str], cell: int, grid: int,
                 classes_range: tuple[int, int], seed: int) -> list[list[str]]:
    """`count` mosaics of one split's images (never another split's), as out/<split>/<i>.png; their CSV rows."""
    by_class: dict[int, list[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    rng = random.Random(f"mosaic|{seed}|{split}")  # a str seed is hashed stably (not by PYTHONHASHSEED)
    decks = _Decks(by_class, rng)
    (out / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        cells = _mosaic_labels(sorted(by_class), rng, grid, *classes_range)
        canvas = Image.new("RGB", (grid * cell, grid * cell))
        for position, label in enumerate(cells):
            row, col = divmod(position, grid)
            canvas.paste(_tile(decks.draw(label), cell), (col * cell, row * cell))
        name = f"{split}/{index:05d}.png"
        canvas.save(out / name)
        rows.append([name, ";".join(sorted({names[c] for c in cells})), split])
    return rows


def write_mosaics(source: str | Path, out: str | Path, *, counts: Mapping[str, int] | None = None, grid: int = 2,
                  min_classes: int = 1, max_classes: int = 4, cell: int | None = None, seed: int = 0,
                  val_fraction: float = 0.2) -> Path:
    """A multi-label dataset from a single-label image folder: grid x grid mosaics of its images, each labelled with
    the set of classes it shows, written as out/<split>/<i>.png + out/labels.csv (path,label,split; labels a;b).

    Splits stay apart: train mosaics use only the source's training images, val mosaics only its validation images
    (a source without val/ is split by val_fraction and seed, as training would), test mosaics only test/ images.
    Each mosaic shows k distinct classes, k drawn uniformly from [min_classes, max_classes] (at most grid x grid),
    so label counts vary. counts: mosaics per split (default: as many as use each source image about once);
    cell: tile side in pixels (default: the median short side of the source images). Seeded; written to a temporary
    folder and renamed into place. A non-empty `out` is refused.
    """
    from tlkit.data.scan import scan_folder

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists; choose another output folder or delete it first.")
    if grid < 1 or not 1 <= min_classes <= max_classes:
        raise DataError(f"Expected grid >= 1 and 1 <= min_classes <= max_classes; got grid {grid}, classes "
                        f"{min_classes}-{max_classes}.")
    scan = scan_folder(source, val_fraction=val_fraction, seed=seed)
    cell = cell or int(statistics.median(min(size) for size in scan.sizes.values()))
    splits = {"train": scan.train, "val": scan.val, "test": scan.test}
    counts = {s: (counts or {}).get(s, len(samples) // (grid * grid)) for s, samples in splits.items()}
    unknown = sorted(set(counts) - set(MOSAIC_SPLITS))
    if unknown or counts["train"] < 1 or counts["val"] < 1:
        raise DataError(f"Mosaic counts must name train, val (and test) with at least 1 train and val mosaic; got "
                        f"{counts}.")
    rows = [["path", "label", "split"]]
    if out.exists():
        out.rmdir()  # empty: the atomic rename needs the name free
    with _written_atomically(out) as tmp:
        for split, samples in splits.items():
            if samples and counts[split]:
                rows += _write_split(samples, split, counts[split], tmp, scan.classes, cell, grid,
                                     (min_classes, max_classes), seed)
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        (tmp / "labels.csv").write_text(text.getvalue(), encoding="utf-8")
        (tmp / "mosaic.json").write_text(json.dumps({
            "source": str(Path(source).resolve()), "classes": scan.classes, "grid": grid, "cell": cell,
            "classes_per_image": [min_classes, max_classes], "seed": seed, "counts": counts}, indent=2) + "\n")
    return out


def generate(kind: str, root: str | Path) -> Path:
    if kind == "digits":
        return write_digits(root)
    raise ValueError(f"Unknown built-in dataset {kind!r}; expected one of {', '.join(GENERATORS)}.")


def write_noisy(source: str | Path, out: str | Path, *, fraction: float = 0.1, seed: int = 0) -> Path:
    """A copy of an image folder with `fraction` of its training images moved to another class folder (uniformly
    among the others, seeded), for checking a label audit against a known answer.

    Only training images move: train/<class>/ when the folder has train/ (val/ and test/ are copied as they are),
    else every <class>/ image (a one-folder layout is split into val later, so some moved images may land in val).
    The truth goes next to `out`, not inside it: <out>.truth.csv with path (relative to out), given (the class
    folder it is in now), true (where it came from). Written to a temporary folder and renamed into place; a
    non-empty `out` or an existing truth file is refused. The source is only read."""
    from tlkit.data.scan import scan_folder

    source, out = Path(source), Path(out)
    truth = truth_path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists; choose another output folder or delete it first.")
    if truth.exists():
        raise DataError(f"{truth} already exists (the truth of an earlier noisy copy); delete it or choose another "
                        "--out.")
    if not 0 < fraction < 1:
        raise DataError(f"--fraction must be between 0 and 1 (the share of training images to mislabel); got "
                        f"{fraction}.")
    scan_folder(source)  # the same checks (classes, images) a training run makes, before anything is written
    train_dir = source / "train" if (source / "train").is_dir() else source
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    images = sorted(p for c in classes for p in (train_dir / c).rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(train_dir).parts))
    rng = random.Random(f"noisy|{seed}")
    moved = set(rng.sample(range(len(images)), round(fraction * len(images))))
    rows = [["path", "given", "true"]]
    if out.exists():
        out.rmdir()  # empty: the atomic rename needs the name free
    with _written_atomically(out) as tmp:
        for item in sorted(source.iterdir()):
            if item != train_dir and item.name not in classes and not item.name.startswith("."):
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        inner = tmp / train_dir.relative_to(source)
        for index, path in enumerate(images):
            true = path.relative_to(train_dir).parts[0]
            given = rng.choice([c for c in classes if c != true]) if index in moved else true
            target = _free_name(inner / given / path.relative_to(train_dir / true))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            if given != true:
                rows.append([target.relative_to(tmp).as_posix(), given, true])
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    atomic_write(truth, text.getvalue())
    return out


def truth_path(out: str | Path) -> Path:
    """Where write_noisy puts the truth of a noisy copy: beside the folder, so training never sees it."""
    out = Path(out)
    return out.parent / f"{out.name}.truth.csv"


def _free_name(path: Path) -> Path:
    """`path`, or path with _1, _2... before the suffix when another class already has a file of that name (the
    name must not give away where an image came from)."""
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}_{n}{path.suffix}"), n + 1
    return candidate
