"""Dataset doctor: inspect an image folder read-only and report every case tlkit treats specially.

`diagnose(root)` returns a JSON-able report; `format_table(report)` renders it. The folder is never modified:
files are opened read-only, symlinks that leave the root (split and class folders included) are reported and not
followed, class folders are the ones training reads (tlkit.data.scan.class_dirs, one link rule),
broken links and symlink loops are reported, and decompression bombs are judged from their header alone (never
decoded).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from tlkit.data.images import is_image_name, load_rgb, to_rgb
from tlkit.data.preflight import exact_duplicates
from tlkit.data.scan import (
    TEST_SPLIT_NAME,
    TRAIN_SPLIT_NAME,
    VAL_SPLIT_NAMES,
    case_clashes,
    class_dirs,
    leaves_root,
    link_problem,
    refuse_stream,
)
from tlkit.data.settings import DEFAULT_LABEL_DELIMITER
from tlkit.errors import DataError, DataNotFoundError, did_you_mean
from tlkit.io import atomic_write

DEFAULT_MIN_SIZE = 32
# Photos have thousands of distinct colours even at 128 px; scrapers' "image not found" pictures and icons have a few
# dozen on a flat background (hymenoptera's imageNotFound.gif: 32 colours, one covering 94% of it). Dim greyscale
# photos can also have few levels, but no colour dominates them.
FEW_COLOURS = 64
FLAT_BACKGROUND = 0.5

# case -> what tlkit does with it (the conversion/skip policy shown in the table and the JSON)
ACTIONS = {
    "zero_byte": "skipped at scan, listed in skipped.txt",
    "non_image": "skipped at scan (not an image extension), listed in skipped.txt",
    "hidden": "ignored (hidden files and folders are never read)",
    "corrupt": "skipped at scan (unreadable header), listed in skipped.txt",
    "truncated": "header reads, pixels do not: data.on_bad_image=skip drops it mid-run and lists it; error stops",
    "decompression_bomb": "refused from its header (never decoded), listed in skipped.txt",
    "symlink_outside_root": "not followed, listed in skipped.txt (a train/val/test folder linked outside: refused)",
    "symlink_loop": "skipped at scan (the link never reaches a file), listed in skipped.txt",
    "broken_symlink": "skipped at scan (the link's target is missing), listed in skipped.txt",
    "too_small": "used; upscaled to the crop (check these are not thumbnails)",
    "mode_L": "converted to RGB (grey copied to 3 channels)",
    "mode_LA": "alpha composited on white, then RGB",
    "mode_RGBA": "alpha composited on white, then RGB",
    "mode_P_transparency": "palette expanded, transparency composited on white, then RGB",
    "mode_P": "palette expanded to RGB",
    "mode_CMYK": "converted to RGB by PIL",
    "mode_I;16": "16-bit grey stretched to 8 bits, then RGB",
    "mode_other": "converted to RGB by PIL",
    "exif_rotated": "rotated to display orientation (EXIF transpose) before augmentation",
    "placeholder_like": f"used as is; < {FEW_COLOURS} colours on a flat background: a placeholder ('image not "
                        "found') or icon? Look, and remove it if it is not a real example",
    "empty_class_folder": "no images: a train class without images is an error; an empty val class is evaluated on nothing",
    "class_only_in_train": "trained, but never validated",
    "class_only_in_val": "error at training: every val class needs training images",
    "class_only_in_test": "error at training: every test class needs training images",
    "duplicate_within_split": "used as is (over-weights those images); consider removing copies",
    "duplicate_across_splits": "LEAKAGE: the same bytes in train and val inflate val metrics; remove one copy",
    # label tables (CSV)
    "missing_file": "skipped at scan, listed in skipped.txt (paths are relative to the table's folder); more than "
                    "half of the listed images missing is refused",
    "multi_label_guessed": "read as multi-label because these rows hold several labels; set data.multi_label: true "
                           "to confirm, or false if the separator is part of class names",
    "classes_differing_in_case": "trained as different classes; write each class one way (rename the folder or "
                                 "the label)",
    "class_with_one_image": "too few to learn or measure; with val carved from train, training refuses it",
    "not_regular_file": "skipped at scan without being opened (a FIFO, socket or device: reading waits forever)",
    "empty_path": "refused: training stops naming the row; give every row an image path",
    "path_outside_root": "refused: training stops naming the row; images must be inside the table's folder",
    "duplicate_path": "refused: training stops naming the rows; list each image once (labels a;b in one row)",
    "empty_label": "refused: training stops naming the row; give it a class (or set data.multi_label: true)",
    "no_labels": "used: an image with none of the classes (an all-zero multi-label target)",
    "several_labels": "refused while data.multi_label is false; set it true (or null) for multi-label data",
    "bad_class_cell": "refused: training stops naming the row; class cells must be 0 or 1",
    "bad_split": "refused: training stops naming the row; split must be train, val or test",
    "class_without_images": "error at training: every class needs training images; add rows or drop the column",
}
MODE_CASES = {"L", "LA", "RGBA", "P", "CMYK", "I;16"}
# Cases whose files decode safely and are worth a look; never bombs, links leaving the root, or unreadable files.
GALLERY_CASES = ("placeholder_like", "duplicate_across_splits", "duplicate_within_split", "too_small", "exif_rotated",
                 "mode_P_transparency", "mode_RGBA", "mode_LA", "mode_CMYK", "mode_I;16")


def _split_dirs(root: Path) -> tuple[dict[str, Path], list[str]]:
    """({"train": ..., "val": ..., "test": ...} as present, or {"all": root}; split folders linked outside root,
    which are reported and never read)."""
    if not (root / TRAIN_SPLIT_NAME).is_dir() and not (root / TRAIN_SPLIT_NAME).is_symlink():
        return {"all": root}, []
    splits: dict[str, Path] = {}
    outside: list[str] = []
    for split, names in (("train", (TRAIN_SPLIT_NAME,)), ("val", VAL_SPLIT_NAMES), ("test", (TEST_SPLIT_NAME,))):
        path = next((root / n for n in names if (root / n).is_dir() or (root / n).is_symlink()), None)
        if path is None:
            continue
        if leaves_root(path, root):
            outside.append(str(path))
        elif path.is_dir():
            splits[split] = path
    if "train" not in splits:
        raise DataError(f"{root / TRAIN_SPLIT_NAME} is a symlink leaving the data folder (or not a folder); the "
                        "doctor does not follow it. Move the folder inside the data folder, or inspect its target.")
    return splits, outside


def _inside(path: Path, root: Path) -> bool:
    """Whether path's real location is inside root (os.path.realpath: a symlink loop cannot raise here)."""
    return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))


def _walk(class_dir: Path):
    """Every entry below class_dir without following directory symlinks (os.walk's default)."""
    for dirpath, dirnames, filenames in os.walk(class_dir):
        base = Path(dirpath)
        for name in sorted(filenames) + sorted(d for d in dirnames if (base / d).is_symlink()):
            yield base / name
        dirnames[:] = sorted(d for d in dirnames if not (base / d).is_symlink())


def _placeholder_like(im: Image.Image) -> bool:
    """Fewer than FEW_COLOURS distinct RGB colours, one of them covering FLAT_BACKGROUND of the picture, counted on a
    nearest-neighbour copy of at most 128 px a side (nearest keeps the palette; getcolors gives up as soon as it
    passes the limit, so photos cost little)."""
    scale = 128 / max(im.size)
    small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.NEAREST) \
        if scale < 1 else im
    small = to_rgb(small)  # the conversion training uses (PIL's own turns 16-bit grey white), on the small copy only
    colours = small.getcolors(FEW_COLOURS - 1)
    return colours is not None and max(colours)[0] >= FLAT_BACKGROUND * small.width * small.height


def _inspect_image(path: Path, min_size: int) -> tuple[list[str], str | None]:
    """(cases, error case or None) for one image file: header first, then a full decode."""
    cases: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                    return cases, "decompression_bomb"
                mode = im.mode
                if mode == "P" and "transparency" in im.info:
                    cases.append("mode_P_transparency")
                elif mode in MODE_CASES:
                    cases.append(f"mode_{mode}")
                elif mode != "RGB":
                    cases.append("mode_other")
                if im.getexif().get(0x0112, 1) not in (1, None):
                    cases.append("exif_rotated")
                    width, height = ImageOps.exif_transpose(im).size
                im.load()  # full decode: catches truncated files the header check cannot
                if min(width, height) >= min_size and _placeholder_like(im):
                    cases.append("placeholder_like")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return cases, "decompression_bomb"
    except UnidentifiedImageError:
        return cases, "corrupt"
    except (OSError, SyntaxError, ValueError) as exc:
        return cases, "truncated" if "truncated" in str(exc).lower() else "corrupt"
    if min(width, height) < min_size:
        cases.append("too_small")
    return cases, None


def _file_cases(path: Path, class_dir: Path, root: Path, min_size: int) -> tuple[list[str], bool]:
    """(the cases of one entry below a class folder, whether training uses the file)."""
    if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
        return ["hidden"], False
    return _entry_cases(path, root, min_size)


def _entry_cases(path: Path, root: Path, min_size: int) -> tuple[list[str], bool]:
    """(the cases of one file a folder holds or a table lists, whether training uses it)."""
    if leaves_root(path, root):
        return ["symlink_outside_root"], False  # never read: it may point anywhere
    problem = link_problem(path) if path.is_symlink() else None
    if problem is not None:
        return ["symlink_loop" if "loop" in problem else "broken_symlink"], False
    if not path.is_file():  # a folder linked inside root (os.walk does not follow it), or a FIFO, socket, device
        return ([] if path.is_dir() else ["not_regular_file"]), False
    if path.stat().st_size == 0:
        return ["zero_byte"], False
    if not is_image_name(path):
        return ["non_image"], False
    cases, error = _inspect_image(path, min_size)
    return ([*cases, error], False) if error else (cases, True)


def diagnose(root: str | Path, *, min_size: int = DEFAULT_MIN_SIZE) -> dict:
    """Report every special case under root. Raises DataNotFoundError / DataError only if the folder is unusable."""
    root = Path(root)
    if not root.is_dir():
        parent = root.parent
        hint = did_you_mean(root.name, [p.name for p in parent.iterdir()]) if parent.is_dir() else ""
        raise DataNotFoundError(f"Data folder {str(root)!r} does not exist.{hint} Pass a folder of class subfolders.")
    refuse_stream(root)  # its images were checked when it was written (file_checks in its tlkit_stream.json)
    splits, outside = _split_dirs(root)
    found: dict[str, list[str]] = defaultdict(list)
    found["symlink_outside_root"] += outside
    counts: dict[str, dict[str, int]] = {}
    readable: dict[str, list[str]] = defaultdict(list)  # split -> readable images (for the duplicate check)
    for split, split_dir in splits.items():
        counts[split] = {}
        for class_dir in class_dirs(split_dir):  # the folders training reads (tlkit.data.scan), by its link rule
            if leaves_root(class_dir, root):
                found["symlink_outside_root"].append(str(class_dir))
                continue
            good = 0
            for path in _walk(class_dir):
                cases, usable = _file_cases(path, class_dir, root, min_size)
                for case in cases:
                    found[case].append(str(path))
                if not usable:
                    continue
                good += 1
                readable[split].append(str(path))
            counts[split][class_dir.name] = good
            if good == 0:
                found["empty_class_folder"].append(str(class_dir))
    main = "train" if "train" in counts else "all"
    found["classes_differing_in_case"] = case_clashes(sorted({c for split in counts.values() for c in split}))
    if len(counts[main]) < 2:
        raise DataError(
            f"{splits[main]} needs at least 2 class subfolders (found {len(counts[main])}); "
            "put each class's images in its own folder."
        )
    train_has = {c for c, n in counts.get("train", {}).items() if n}
    if "val" in counts:
        val_has = {c for c, n in counts["val"].items() if n}
        found["class_only_in_train"] = sorted(train_has - val_has)
        found["class_only_in_val"] = sorted(val_has - train_has)
    if "test" in counts:
        found["class_only_in_test"] = sorted({c for c, n in counts["test"].items() if n} - train_has)
    _list_duplicates(readable, found)
    nonzero = [n for n in counts[main].values() if n]
    return {
        "root": str(root),
        "layout": "split" if "val" in counts else "carved" if "train" in counts else "single",
        "min_size": min_size,
        "class_counts": counts,
        "imbalance_ratio": (max(nonzero) / min(nonzero)) if nonzero else None,
        "cases": {case: {"count": len(items), "items": items, "action": ACTIONS[case]}
                  for case, items in sorted(found.items()) if items},
    }


def format_table(report: dict) -> str:
    """A plain table: case | count | example | what tlkit does, then class counts and the imbalance ratio."""
    rows = [("case", "count", "example", "what tlkit does")]
    for case, info in report["cases"].items():
        example = info["items"][0]
        if len(example) > 60:
            example = "..." + example[-57:]
        rows.append((case, str(info["count"]), example, info["action"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    if len(rows) == 1:
        lines.append("(no problems found)")
    for split, classes in report["class_counts"].items():
        lines.append(f"{split}: " + ", ".join(f"{c}={n}" for c, n in classes.items()))
    if report.get("labels_per_image"):
        lines.append("labels per image: " + ", ".join(f"{k}: {n}" for k, n in report["labels_per_image"].items()))
    ratio = report["imbalance_ratio"]
    lines.append(f"imbalance ratio (largest/smallest class): {ratio:.2f}" if ratio else "imbalance ratio: n/a")
    return "\n".join(lines)


def default_report_path(root: str | Path) -> Path:
    """runs/doctor/<folder>.json, or for a label table runs/doctor/<folder>-<table>.json."""
    resolved = Path(root).resolve()
    if resolved.suffix.lower() == ".csv":
        return Path("runs") / "doctor" / f"{resolved.parent.name}-{resolved.stem}.json"
    return Path("runs") / "doctor" / f"{resolved.name}.json"


def diagnose_table(table: str | Path, *, min_size: int = DEFAULT_MIN_SIZE, multi_label: bool | None = None,
                   delimiter: str = DEFAULT_LABEL_DELIMITER, columns: dict[str, str] | None = None) -> dict:
    """Report every problem of a label table (rows training refuses, files it skips, classes without images) and
    every special case of the images it lists, as `diagnose` does for folders. The table's folder is the root;
    columns: the table's own names for path, label, split (data.columns).
    Raises DataNotFoundError / DataError only if the table cannot be read (missing, empty, no path column)."""
    from tlkit.data.table import TABLE_LAYOUT, parse_table, read_csv_table

    table = Path(table)
    root = table.parent
    parsed = parse_table(read_csv_table(table, columns), root, multi_label=multi_label, delimiter=delimiter)
    found: dict[str, list[str]] = defaultdict(list)
    for case, items in parsed.problems.items():
        found[case] += items
    splits = ("train", "val", "test") if parsed.has_split else ("all",)
    counts = {split: dict.fromkeys(parsed.classes, 0) for split in splits}
    readable: dict[str, list[str]] = defaultdict(list)
    for row in parsed.rows:
        path = Path(row.path)
        if not os.path.lexists(path):
            found["missing_file"].append(f"{row.place}: {row.written!r}")
            continue
        cases, usable = _entry_cases(path, root, min_size)
        for case in cases:
            found[case].append(str(path))
        if usable:
            split = row.split or "all"
            for name in row.labels:
                counts[split][name] += 1
            readable[split].append(str(path))
    _split_cases(counts, found)
    _list_duplicates(readable, found)
    main = counts["train"] if parsed.has_split else counts["all"]
    nonzero = [n for n in main.values() if n]
    per_image = Counter(len(row.labels) for row in parsed.rows) if parsed.multi_label else None
    return {
        "root": str(root), "table": str(table), "layout": TABLE_LAYOUT, "multi_label": parsed.multi_label,
        **({"labels_per_image": {str(k): per_image[k] for k in sorted(per_image)}} if per_image else {}),
        "min_size": min_size, "class_counts": {s: c for s, c in counts.items() if any(c.values()) or s != "test"},
        "imbalance_ratio": (max(nonzero) / min(nonzero)) if nonzero else None,
        "cases": {case: {"count": len(items), "items": items, "action": ACTIONS[case]}
                  for case, items in sorted(found.items()) if items},
    }


def _list_duplicates(readable: dict[str, list[str]], found: dict[str, list[str]]) -> None:
    """Byte-identical files, within a split or across splits, as "a == b" lines (the one duplicate check that
    training's preflight runs too: only files sharing a byte size are read)."""
    for copies in exact_duplicates(readable):
        case = "duplicate_across_splits" if len({s for s, _ in copies}) > 1 else "duplicate_within_split"
        found[case].append(" == ".join(p for _, p in copies))


def _split_cases(counts: dict[str, dict[str, int]], found: dict[str, list[str]]) -> None:
    """Classes a table's split column gives images in val or test but not train (or train only)."""
    if "train" not in counts:
        return
    train_has = {c for c, n in counts["train"].items() if n}
    val_has = {c for c, n in counts["val"].items() if n}
    if val_has:
        found["class_only_in_train"] += sorted(train_has - val_has)
    found["class_only_in_val"] += sorted(val_has - train_has)
    found["class_only_in_test"] += sorted({c for c, n in counts["test"].items() if n} - train_has)


def write_report(report: dict, path: str | Path) -> Path:
    """Write the JSON report; refuses a path inside the data folder (the doctor never writes there)."""
    path = Path(path)
    if _inside(path, Path(report["root"])):
        raise DataError(f"Refusing to write the report inside the data folder ({path}); pass --json elsewhere.")
    return atomic_write(path, json.dumps(report, indent=2) + "\n")


def gallery_items(report: dict, per_case: int = 4) -> list[tuple[str, str]]:
    """(image path, caption) for up to `per_case` files of each case worth looking at, as training will see them."""
    items = []
    for case in GALLERY_CASES:
        entries = report["cases"].get(case, {}).get("items", [])
        for i, entry in enumerate(entries[:per_case]):
            paths = entry.split(" == ")  # duplicates are listed as "a == b [== c]": show the first copy
            names = " == ".join(Path(p).name for p in paths)
            items.append((paths[0], f"{case} ({i + 1}/{len(entries)})\n{names if len(names) <= 40 else names[:39] + '…'}"))
    return items


def write_gallery(report: dict, path: str | Path) -> Path | None:
    """A PNG of the flagged images (gallery_items), or None when nothing is worth a look. Never inside the data."""
    items = gallery_items(report)
    if not items:
        return None
    if _inside(Path(path), Path(report["root"])):
        raise DataError(f"Refusing to write the gallery inside the data folder ({path}); pass --json elsewhere.")
    from tlkit.plots import plot_image_gallery

    return plot_image_gallery(items, Path(path), title=f"tlkit doctor: files to look at in {report['root']}",
                              load=load_rgb)
