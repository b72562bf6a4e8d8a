"""Labels in a table: a CSV file (data.source: csv) or a pandas DataFrame, scanned into the same FolderScan as class
folders, so loaders, the feature cache, saved splits, preflight and evaluate work unchanged.

Two forms, both with an optional `split` column (train / val / test; valid and validation mean val):
- path,label[,split]: one class name per row, or several joined by the delimiter (a;b) for multi-label data;
- path,<class1>,<class2>,...[,split]: a 0/1 cell per class (multi-label unless data.multi_label is false, when each
  row must have exactly one 1).
Image paths are relative to the table's folder (a DataFrame's: root) and must stay inside root. Classes are the
sorted names, as with folders. Without a split column, val (and test) are carved with the seeded split of the folder
scan: stratified by class for single-label data; for multi-label data, by each image's rarest label.

`parse_table` collects every problem of a table (the doctor lists them all); `scan_table` / `scan_dataframe` refuse
the ones that would make training wrong and skip, listing them, files that are missing or unreadable.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.data.curation import curate, rename_columns
from tlkit.data.scan import (
    LINK_OUTSIDE,
    FolderScan,
    _existing_root,
    case_clashes,
    read_header,
    stratified_split,
)
from tlkit.data.settings import (
    DEFAULT_LABEL_DELIMITER,
    DEFAULT_SEED,
    DEFAULT_TABLE,
    DEFAULT_VAL_FRACTION,
)
from tlkit.errors import DataError, DataNotFoundError, did_you_mean

log = logging.getLogger(__name__)

PATH, LABEL, SPLIT = "path", "label", "split"
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
ONE, ZERO = frozenset({"1", "1.0", "true", "yes"}), frozenset({"0", "0.0", "false", "no"})
TABLE_LAYOUT = "table"
MAX_LISTED = 3  # examples named in an error message; the doctor lists all
# Tables are read into memory (about 500 bytes a row once parsed): reading stops with an error past this many rows, so
# a runaway table costs at most ~1 GB instead of ending in a MemoryError. ImageNet-1k's 1.28 M images fit.
MAX_TABLE_ROWS = 2_000_000
# More than this fraction of the listed images missing is refused: it is nearly always paths written relative to
# another folder, and training on the few that happen to exist would look like success.
MAX_MISSING_FRACTION = 0.5

CLASS_CELL_FIX = ("write 1 where the image has the class, else 0 (without a label column, every column but path and "
                  "split is a class)")
# Problems that make a table unusable for training: case -> (what is wrong, how to fix it).
REFUSED = {
    "empty_path": ("an empty path cell", "give every row an image path"),
    "path_outside_root": ("a path leaving the data folder",
                          "move the images inside data.root (paths are relative to the table's folder)"),
    "duplicate_path": ("an image listed twice", "list each image once (several labels go in one cell: a;b)"),
    "empty_label": ("no label", "give every row a class name (or set data.multi_label: true for images with none)"),
    "several_labels": ("not exactly one label while data.multi_label is false",
                       "set data.multi_label: true (or null), or give one label per row"),
    "bad_class_cell": ("a class cell that is not 0 or 1", CLASS_CELL_FIX),
    "bad_split": ("a split value other than train, val or test", "use train, val or test (or drop the column)"),
}


@dataclass
class Table:
    """A table as read: column names and rows of text cells (tuples aligned with columns, to keep big tables small),
    with where each row came from (for messages: `place(i)`)."""

    name: str  # the CSV file's path, or "DataFrame"
    base: Path  # the folder image paths are relative to
    columns: list[str]
    rows: list[tuple[str, ...]]
    origins: list  # the CSV line numbers, or the DataFrame's index labels, aligned with rows

    def place(self, i: int) -> str:
        """ "labels.csv line 7" / "DataFrame row 5" """
        return f"{self.where} {self.origins[i]}"

    @property
    def where(self) -> str:
        return "DataFrame row" if self.name == "DataFrame" else f"{os.path.basename(self.name)} line"


@dataclass(slots=True)
class TableRow:
    where: str  # "labels.csv line" / "DataFrame row": one string shared by every row
    origin: Any  # the CSV line number or the DataFrame's index label
    written: str  # the path as the table writes it
    path: str  # absolute, normalised
    labels: tuple[str, ...]  # shared by the rows with the same labels
    split: str | None

    @property
    def place(self) -> str:
        """ "labels.csv line 7" / "DataFrame row 5", built when a message needs it (not stored per row)."""
        return f"{self.where} {self.origin}"


@dataclass
class ParsedTable:
    """The usable rows, the classes, the label form and every problem found (case -> ["place: detail", ...])."""

    rows: list[TableRow]
    classes: list[str]
    multi_label: bool
    form: str  # "label" (path,label) or "columns" (0/1 per class)
    problems: dict[str, list[str]] = field(default_factory=dict)
    has_split: bool = False


# -- reading ----------------------------------------------------------------------------------------------------------

def _header(cells: list[str]) -> list[str]:
    names = [c.strip() for c in cells]
    return [n.lower() if n.lower() in (PATH, LABEL, SPLIT) else n for n in names]


def _check_columns(columns: list[str], name: str) -> None:
    repeated = sorted(c for c, n in Counter(columns).items() if n > 1)
    if repeated:
        raise DataError(f"{name}: the header repeats column(s) {', '.join(map(repr, repeated))}; give each column "
                        "one name.")
    if PATH not in columns:
        hint = did_you_mean(PATH, columns) or _mapping_hint(columns)
        raise DataError(f"{name}: no 'path' column in the header (found {', '.join(map(repr, columns)) or 'none'})."
                        f"{hint} Expected path,label[,split] or path,<class1>,<class2>,...[,split].")
    if "" in columns:
        raise DataError(f"{name}: the header has an empty column name; name every column (path,label[,split]).")
    if len(columns) == 1:
        raise DataError(f"{name}: only a 'path' column; add a label column (path,label) or one 0/1 column per class.")


# Headers of other tools' tables (Kaggle's image_name,tags / id,label / path,tags): which column to read for what.
PATH_LIKE = ("file", "filename", "file_name", "fname", "filepath", "image", "img", "image_path", "image_name",
             "image_id", "imageid", "name", "id")
LABEL_LIKE = ("labels", "tags", "tag", "class", "classes", "category", "target")


def _mapping_hint(columns: list[str]) -> str:
    """ " Rename 'image_name' to 'path' and 'tags' to 'label'? ..." for a header naming its columns otherwise."""
    path_column = next((c for c in columns if c.lower() in PATH_LIKE), None)
    if path_column is None:
        return ""
    label_column = next((c for c in columns if c.lower() in LABEL_LIKE), None)
    label = label_column if label_column and LABEL not in columns else None
    mapping = f"path: {path_column}" + (f", label: {label}" if label else "")
    flag = f"path={path_column}" + (f",label={label}" if label else "")
    return (f" Is {path_column!r} the image path{f' and {label!r} the label' if label else ''}? Set data.columns: "
            f"{{{mapping}}} (or rename the header; tlkit doctor: --columns {flag}); paths need their file extension "
            "(an id such as 0001 is written 0001.jpg).")


def _label_column(table: Table) -> list[str]:
    """The columns as parsed: a lone column of class names beside path (Kaggle's path,tags) is the label column,
    said in a warning, instead of being read as one 0/1 class column that every row then fails."""
    others = [c for c in table.columns if c not in (PATH, LABEL, SPLIT)]
    if LABEL in table.columns or len(others) != 1:
        return table.columns
    j = table.columns.index(others[0])
    if all(cells[j].lower() in ONE | ZERO for cells in table.rows):
        return table.columns
    log.warning("%s: took column %r as the label column (its cells are class names, not 0/1); set data.columns: "
                "{label: %s} (tlkit doctor: --columns label=%s) to say so, or write 0/1 cells for a class column",
                table.name, others[0], others[0], others[0])
    return [LABEL if c == others[0] else c for c in table.columns]


def read_csv_table(path: str | Path, column_names: dict[str, str] | None = None) -> Table:
    """Read a CSV with the standard library, streaming: DataError naming the file (and line) and the fix when
    unusable, or when it has more than MAX_TABLE_ROWS rows (reading stops there: bounded memory); column_names: the
    table's own names for path, label, split (data.columns)."""
    path = Path(path)
    if not path.is_file():
        parent = path.parent
        hint = did_you_mean(path.name, [p.name for p in parent.iterdir()]) if parent.is_dir() else ""
        raise DataNotFoundError(f"Label table {str(path)!r} does not exist.{hint} data.csv is relative to data.root "
                                "(e.g. --set data.csv=labels.csv).")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a BOM
            columns, rows, lines = _read_rows(path, _records(csv.reader(f)), column_names)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8.") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); check quoting around commas.") from None
    return Table(name=str(path), base=path.parent, columns=columns, rows=rows, origins=lines)


def _read_rows(path: Path, records, column_names: dict[str, str] | None = None
               ) -> tuple[list[str], list[tuple[str, ...]], list[int]]:
    """(columns, rows of stripped cells, their line numbers) from (line, cells) records; blank lines skipped."""
    columns: list[str] | None = None
    rows: list[tuple[str, ...]] = []
    lines: list[int] = []
    seen: dict[str, str] = {}  # label, class and split cells repeat: each distinct text is stored once
    path_at = -1
    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue
        if columns is None:
            columns = _header(rename_columns([c.strip() for c in cells], column_names, str(path)))  # data.columns
            _check_columns(columns, str(path))
            path_at = columns.index(PATH)
            continue
        if len(cells) != len(columns):
            raise DataError(f"{path} line {line}: {len(cells)} cell(s) where the header has {len(columns)}; quote "
                            "cells that contain commas, and give every row one cell per column.")
        if len(rows) == MAX_TABLE_ROWS:
            raise DataError(f"{path} has more than {MAX_TABLE_ROWS:,} rows (stopped reading at line {line}); tlkit "
                            "reads a table into memory: split it into smaller tables, or use class folders.")
        rows.append(tuple(_shared(c.strip(), seen) if j != path_at else c.strip() for j, c in enumerate(cells)))
        lines.append(line)
    if columns is None:
        raise DataError(f"{path} is empty; expected a header line such as path,label[,split] and one row per image.")
    if not rows:
        raise DataError(f"{path} has a header but no rows; add one row per image.")
    return columns, rows, lines


MAX_SHARED_CELLS = 100_000  # distinct non-path cells shared; past this (an id column) cells are stored as read


def _shared(cell: str, seen: dict[str, str]) -> str:
    """One string object per distinct cell text: a million rows of 10 class names hold 10 label strings."""
    if len(seen) < MAX_SHARED_CELLS:
        return seen.setdefault(cell, cell)
    return seen.get(cell, cell)


def iter_table_paths(path: str | Path):
    """The image paths a CSV table lists, one at a time (bounded memory at any size): the `path` column (any other
    columns are ignored), relative paths taken from the table's folder, in table order; an empty cell yields
    (None, "line N"). DataError / DataNotFoundError as read_csv_table for a missing, unreadable or pathless table.
    What `tlkit predict TABLE.csv` predicts."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Label table {str(path)!r} does not exist.")
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            at = None
            for line, cells in _records(reader):
                if not any(c.strip() for c in cells):
                    continue
                if at is None:
                    columns = _header(cells)
                    if PATH not in columns:
                        hint = did_you_mean(PATH, columns) or _mapping_hint(columns)
                        raise DataError(f"{path}: no 'path' column in the header (found "
                                        f"{', '.join(map(repr, columns)) or 'none'}).{hint}")
                    at = columns.index(PATH)
                    continue
                written = cells[at].strip() if at < len(cells) else ""
                yield (os.path.normpath(os.path.join(base, os.path.expanduser(written))) if written else None,
                       f"{path.name} line {line}")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8.") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); check quoting around commas.") from None


def _records(reader):
    """(line number where the row ends, cells): the line a user sees in an editor for one-line rows."""
    for cells in reader:
        yield reader.line_num, cells


def _cell_text(value: Any, delimiter: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' empty cell
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple, set, frozenset)):
        return delimiter.join(sorted(str(v) for v in value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def dataframe_table(df: Any, root: str | Path, *, delimiter: str = DEFAULT_LABEL_DELIMITER,
                    column_names: dict[str, str] | None = None) -> Table:
    """A pandas DataFrame (or anything with .columns and .to_dict('records')) as a Table whose paths are relative to
    root. A label cell may also be a list of class names (multi-label)."""
    if not hasattr(df, "columns") or not hasattr(df, "to_dict"):
        raise DataError(f"Expected a pandas DataFrame with columns path,label[,split]; got {type(df).__name__}.")
    columns = _header(rename_columns([str(c).strip() for c in df.columns], column_names, "DataFrame"))
    _check_columns(columns, "DataFrame")
    rows = [tuple(_cell_text(v, delimiter) for v in record.values()) for record in df.to_dict(orient="records")]
    if not rows:
        raise DataError("The DataFrame has no rows; add one row per image.")
    return Table(name="DataFrame", base=Path(root), columns=columns, rows=rows,
                 origins=list(getattr(df, "index", range(len(rows)))))


# -- parsing ----------------------------------------------------------------------------------------------------------

def _inside(path: str, root: str) -> bool:
    """Whether normalised absolute `path` is `root` or below it (a prefix test: commonpath cost 10 s per million
    rows)."""
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _labels(row: dict[str, str], place: str, class_columns: list[str], multi_label: bool | None,
            delimiter: str, problems: dict[str, list[str]]) -> tuple[str, ...] | None:
    """The row's class names (sorted, distinct), or None when a problem makes the row unusable."""
    if not class_columns:
        cell = row[LABEL]
        names = split_labels(cell, delimiter)
        if len(names) > 1 and multi_label is False:
            problems["several_labels"].append(f"{place}: {cell!r}")
            return None
        return names
    bad = [c for c in class_columns if row[c].lower() not in ONE | ZERO]
    if bad:
        problems["bad_class_cell"].append(f"{place}: {bad[0]}={row[bad[0]]!r}")
        return None
    names = tuple(c for c in sorted(class_columns) if row[c].lower() in ONE)
    if multi_label is False and len(names) != 1:
        problems["several_labels"].append(f"{place}: {len(names)} classes marked 1")
        return None
    if not names:
        problems["no_labels"].append(place)
    return names


def split_labels(cell: str, delimiter: str) -> tuple[str, ...]:
    """A label cell's class names, sorted and distinct; a blank delimiter splits at any run of whitespace (Kaggle's
    space-separated tags: 'haze primary')."""
    parts = cell.split(delimiter) if delimiter.strip() else cell.split()
    return tuple(sorted({n.strip() for n in parts if n.strip()}))


def check_label_delimiter(cells: list[str], delimiter: str, name: str) -> None:
    """DataError when the label cells look like space-separated tags but the delimiter is another character: no cell
    holds the delimiter, and most cells of several words are made of words that recur in other cells (tags), not
    of class names that contain a space ('golden retriever')."""
    if not delimiter.strip() or any(delimiter in c for c in cells):
        return
    worded = {c: c.split() for c in set(cells) if len(c.split()) > 1}
    if len(worded) < 2:
        return
    cells_with = Counter(word for c in set(cells) for word in set(c.split()))
    tags = [c for c, words in worded.items() if all(cells_with[w] > 1 for w in words)]
    if 2 * len(tags) >= len(worded):
        raise DataError(f"{name}: the labels look separated by spaces ({min(tags)!r} and {len(tags) - 1} more) but "
                        f"data.label_delimiter is {delimiter!r}; set it to a space (label_delimiter: \" \"), or set "
                        "data.multi_label: false if each cell is one class name.")


def parse_table(table: Table, root: str | Path, *, multi_label: bool | None = None,
                delimiter: str = DEFAULT_LABEL_DELIMITER) -> ParsedTable:
    """Every row checked: path (present, inside root, listed once), labels, split. Files are not opened here."""
    root_abs = os.path.abspath(root)
    base = os.path.abspath(table.base)
    columns = _label_column(table)
    class_columns = [c for c in columns if c not in (PATH, LABEL, SPLIT)] if LABEL not in columns else []
    if LABEL in columns and len(columns) > 2 + (SPLIT in columns):
        extra = [c for c in columns if c not in (PATH, LABEL, SPLIT)]
        raise DataError(f"{table.name}: a 'label' column and other columns ({', '.join(map(repr, extra))}); use "
                        "path,label[,split], or path plus one 0/1 column per class without 'label'.")
    if LABEL in columns and multi_label is not False:
        at = columns.index(LABEL)
        check_label_delimiter([cells[at] for cells in table.rows], delimiter, table.name)
    problems: dict[str, list[str]] = {case: [] for case in (*REFUSED, "no_labels", "class_without_images")}
    rows: list[TableRow] = []
    first: dict[str, Any] = {}  # path -> the origin of the row that listed it first
    where = table.where
    label_sets: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple object per distinct label set
    for cells, origin in zip(table.rows, table.origins):
        row, place = dict(zip(columns, cells)), f"{where} {origin}"  # kept only in messages
        written = row[PATH]
        if not written:
            problems["empty_path"].append(place)
            continue
        path = os.path.normpath(os.path.join(base, os.path.expanduser(written)))
        if not _inside(path, root_abs):
            problems["path_outside_root"].append(f"{place}: {written!r}")
            continue
        if path in first:
            problems["duplicate_path"].append(f"{place}: {written!r} (first on {where} {first[path]})")
            continue
        first[path] = origin
        split = None
        if SPLIT in table.columns:
            split = SPLIT_VALUES.get(row[SPLIT].lower())
            if split is None:
                hint = did_you_mean(row[SPLIT].lower(), SPLIT_VALUES)
                problems["bad_split"].append(f"{place}: {row[SPLIT]!r}{hint}")
                continue
        labels = _labels(row, place, class_columns, multi_label, delimiter, problems)
        if labels is not None:
            rows.append(TableRow(where, origin, written, path, label_sets.setdefault(labels, labels), split))
    if class_columns:
        decided = multi_label is not False
        classes = sorted(class_columns)
    else:  # an empty label cell: an image with none of the classes (multi-label), else a mistake
        decided = multi_label if multi_label is not None else any(len(r.labels) > 1 for r in rows)
        problems["no_labels" if decided else "empty_label"] += [r.place for r in rows if not r.labels]
        rows = [r for r in rows if r.labels or decided]
        classes = sorted({name for r in rows for name in r.labels})
    present = Counter(name for r in rows for name in r.labels)
    problems["class_without_images"] = [c for c in classes if c not in present]
    if decided and multi_label is None and not class_columns:  # guessed from the delimiter: say so
        problems["multi_label_guessed"] = [f"{r.place}: {delimiter.join(r.labels)!r}" for r in rows
                                           if len(r.labels) > 1]
    problems["classes_differing_in_case"] = case_clashes(classes)
    single = {c for c, n in present.items() if n == 1}
    problems["class_with_one_image"] = [f"{c!r} ({r.place})" for r in rows for c in r.labels if c in single]
    return ParsedTable(rows=rows, classes=classes, multi_label=decided, form="columns" if class_columns else "label",
                       problems={k: v for k, v in problems.items() if v}, has_split=SPLIT in table.columns)


# Problems a table may have that training accepts, warned about at scan (the doctor lists every row).
WARNED = {
    "multi_label_guessed": "read as multi-label because {n} row(s) hold several labels ({listed}); set "
                           "data.multi_label: true to confirm, or false if the separator belongs to class names "
                           "(or change data.label_delimiter)",
    "classes_differing_in_case": "{n} group(s) of class names differ only in case ({listed}); they are trained as "
                                 "different classes: write each class one way",
    "class_with_one_image": "{n} class(es) with a single image ({listed}): too few to learn or measure",
}


def warn_problems(parsed: ParsedTable, name: str) -> None:
    for case, message in WARNED.items():
        items = parsed.problems.get(case, [])
        if items:
            listed = ", ".join(items[:MAX_LISTED]) + (f" and {len(items) - MAX_LISTED} more" if len(items) >
                                                                                             MAX_LISTED else "")
            log.warning("%s: %s", name, message.format(n=len(items), listed=listed))


# -- scanning ---------------------------------------------------------------------------------------------------------

def refuse_problems(parsed: ParsedTable, name: str) -> None:
    """DataError for the first refused problem, naming up to MAX_LISTED rows and the fix."""
    found = [(case, items) for case, items in parsed.problems.items() if case in REFUSED]
    if not found:
        return
    case, items = found[0]
    what, fix = REFUSED[case]
    listed = "; ".join(items[:MAX_LISTED]) + (f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
    others = sum(len(i) for _, i in found[1:])
    more = f" ({others} other problem(s) too: tlkit doctor {name} lists every one)" if others else ""
    raise DataError(f"{len(items)} row(s) with {what}: {listed}. Fix: {fix}.{more}")


def _usable_files(rows: list[TableRow], root: str | Path, name: str, skipped: list[tuple[str, str]],
                  sizes: dict[str, tuple[int, int]]) -> list[TableRow]:
    """Rows whose file exists, is a regular file, stays inside root through links, and has a readable image header;
    the others are skipped and listed, as the folder scan skips unreadable files. DataError when more than
    MAX_MISSING_FRACTION of the listed files are missing."""
    missing = [row for row in rows if not os.path.lexists(row.path)]
    _refuse_missing(missing, len(rows), name)
    skipped += [(row.path, f"missing (listed on {row.place})") for row in missing]
    gone = {id(row) for row in missing}
    real_root = os.path.realpath(root)
    usable = []
    for row in rows:
        if id(row) in gone:
            continue
        reason = _file_problem(row.path, real_root)
        if reason is None:
            size, reason = read_header(Path(row.path))
        if reason is not None:
            skipped.append((row.path, reason))
            continue
        sizes[row.path] = size
        usable.append(row)
    return usable


def _file_problem(path: str, real_root: str) -> str | None:
    """Why an existing listed path cannot be read as an image file before opening it (None: go on). A FIFO or a
    device is never opened: reading one waits forever."""
    if not _inside(os.path.realpath(path), real_root):
        return LINK_OUTSIDE
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device); never opened"
    return None


def _refuse_missing(missing: list[TableRow], listed: int, name: str) -> None:
    if not missing or len(missing) <= MAX_MISSING_FRACTION * listed:
        return
    first = "; ".join(f"{row.place}: {row.written!r}" for row in missing[:MAX_LISTED])
    if len(missing) == listed:
        raise DataError(f"None of the {listed:,} images listed in {name} exist (first: {missing[0].place}: "
                        f"{missing[0].written!r} -> {missing[0].path}); paths are relative to the table's folder.")
    raise DataError(f"{len(missing):,} of the {listed:,} images listed in {name} do not exist (first: {first}); "
                    f"tlkit refuses a table with more than {MAX_MISSING_FRACTION:.0%} missing. Check that paths are "
                    "relative to the table's folder, or remove the rows of deleted images (tlkit doctor lists them).")


def log_skipped(skipped: list[tuple[str, str]], *, shown: int = 10) -> None:
    """Warn about skipped files: the first `shown` one per line, then one summary line (a table naming a million
    missing files must not print a million lines; the run's skipped.txt lists every one)."""
    for path, reason in skipped[:shown]:
        log.warning("skipped %s (%s)", path, reason)
    if len(skipped) > shown:
        reasons = Counter(reason.split(" (listed on ")[0] for _, reason in skipped[shown:])
        summary = ", ".join(f"{n:,} {why}" for why, n in reasons.most_common(3))
        log.warning("skipped %s more file(s): %s%s", f"{len(skipped) - shown:,}", summary,
                    " ..." if len(reasons) > 3 else "")


def _stratum(labels: tuple[int, ...], counts: Counter) -> int:
    """Multi-label split stratum: the image's rarest label (-1 for an image with none)."""
    return min(labels, key=lambda c: (counts[c], c)) if labels else -1


def _carve(samples: list, *, multi_label: bool, val_fraction: float, test_fraction: float, seed: int):
    if not multi_label:
        return stratified_split(samples, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    counts = Counter(c for _, labels in samples for c in labels)
    return stratified_split(samples, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                            key=lambda s: _stratum(s[1], counts))


def scan_parsed(parsed: ParsedTable, root: str | Path, name: str, *, val_fraction: float = DEFAULT_VAL_FRACTION,
                test_fraction: float = 0.0, seed: int = DEFAULT_SEED) -> FolderScan:
    """FolderScan of a parsed table: refused problems raise, unusable files are skipped and listed, splits come
    from the split column or are carved (seeded) from the training rows."""
    refuse_problems(parsed, name)
    warn_problems(parsed, name)
    if not parsed.multi_label and len(parsed.classes) < 2:
        raise DataError(f"{name} names {len(parsed.classes)} class(es) ({', '.join(parsed.classes) or 'none'}); "
                        "single-label training needs at least 2.")
    skipped: list[tuple[str, str]] = []
    sizes: dict[str, tuple[int, int]] = {}
    rows = _usable_files(parsed.rows, root, name, skipped, sizes)
    index = {c: i for i, c in enumerate(parsed.classes)}
    by_split: dict[str | None, list] = {"train": [], "val": [], "test": [], None: []}
    for row in rows:
        ids = tuple(sorted(index[c] for c in row.labels))
        by_split[row.split].append((row.path, ids if parsed.multi_label else ids[0]))
    pool = by_split["train"] + by_split[None]
    if not parsed.multi_label and not by_split["val"] and val_fraction > 0:
        _refuse_single_images(parsed, rows, name)
    train, val, test = _carve(pool, multi_label=parsed.multi_label,
                              val_fraction=0.0 if by_split["val"] else val_fraction,
                              test_fraction=0.0 if by_split["test"] else test_fraction, seed=seed)
    val, test = sorted(by_split["val"]) or val, sorted(by_split["test"]) or test
    _check_training_classes(parsed, train, val, name)
    log_skipped(skipped)
    return FolderScan(classes=list(parsed.classes), train=train, val=val, layout=TABLE_LAYOUT, skipped=skipped,
                      sizes=sizes, test=test, multi_label=parsed.multi_label, root=str(root))


def _refuse_single_images(parsed: ParsedTable, rows: list[TableRow], name: str) -> None:
    """A class with one usable training row cannot be split into train and val: name it and its line."""
    counts = Counter(row.labels[0] for row in rows if row.split in (None, "train"))
    single = [row for row in rows if row.split in (None, "train") and counts[row.labels[0]] == 1]
    if single:
        listed = "; ".join(f"{row.labels[0]!r} ({row.place})" for row in single[:MAX_LISTED])
        raise DataError(f"{len(single)} class(es) in {name} have a single training image: {listed}; val is carved "
                        "per class, so each needs at least 2: add images, or mark rows split=val.")


def _check_training_classes(parsed: ParsedTable, train: list, val: list, name: str) -> None:
    seen = {c for _, y in train for c in (y if parsed.multi_label else (y,))}
    empty = [c for i, c in enumerate(parsed.classes) if i not in seen]
    if empty:
        raise DataError(f"No training images for class(es) {', '.join(empty)} in {name}; add rows for them (split "
                        "train) or remove the class.")
    if not val:
        raise DataError(f"No validation images in {name}; mark some rows split=val, or drop the split column so "
                        "val is carved by data.val_fraction.")


def scan_table(root: str | Path, csv_name: str | Path = DEFAULT_TABLE, *, multi_label: bool | None = None,
               label_delimiter: str = DEFAULT_LABEL_DELIMITER, val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0,
               seed: int = DEFAULT_SEED, columns: dict[str, str] | None = None) -> FolderScan:
    """Scan data.root/<csv_name> (data.source: csv) into a FolderScan; columns: the table's names for path, label,
    split (data.columns)."""
    root = _existing_root(root)
    path = root / csv_name
    if not _inside(os.path.realpath(path), os.path.realpath(root)):  # never read (or echo) a file outside the data
        raise DataError(f"data.csv {str(csv_name)!r} is outside data.root {str(root)!r}; put the label table inside "
                        "the data folder and give its path relative to it (e.g. --set data.csv=labels.csv).")
    table = read_csv_table(path, columns)
    parsed, name = parse_table(table, root, multi_label=multi_label, delimiter=label_delimiter), table.name
    del table  # the raw cells: the parsed rows keep what the scan needs (~80 bytes a row less at the peak)
    return scan_parsed(parsed, root, name, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def scan_dataframe(df: Any, root: str | Path, *, multi_label: bool | None = None, label_delimiter: str = DEFAULT_LABEL_DELIMITER,
                   val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0, seed: int = DEFAULT_SEED,
                   columns: dict[str, str] | None = None) -> FolderScan:
    """Scan a DataFrame whose paths are relative to root: the same checks as a CSV."""
    root = _existing_root(root)
    table = dataframe_table(df, root, delimiter=label_delimiter, column_names=columns)
    parsed, name = parse_table(table, root, multi_label=multi_label, delimiter=label_delimiter), table.name
    del table  # the raw cells: the parsed rows keep what the scan needs (~80 bytes a row less at the peak)
    return scan_parsed(parsed, root, name, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def scan_data(root: str | Path, *, source: str = "folder", csv: str = DEFAULT_TABLE, multi_label: bool | None = None,
              label_delimiter: str = DEFAULT_LABEL_DELIMITER, val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0, seed: int = DEFAULT_SEED,
              table: Any = None, columns: dict[str, str] | None = None, exclude: Any = None,
              relabel: str | None = None) -> FolderScan:
    """The scan for any data source: class folders, a CSV under root, or a DataFrame (`table`), with data.exclude
    and data.relabel applied (tlkit.data.curation)."""
    split = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    scan = _scan_source(root, source, csv, multi_label, label_delimiter, split, table, columns)
    return curate(scan, exclude=exclude, relabel=relabel, label_delimiter=label_delimiter)


def _scan_source(root, source, csv, multi_label, label_delimiter, split, table, columns) -> FolderScan:
    from tlkit.data.scan import scan_folder

    labels = {"multi_label": multi_label, "label_delimiter": label_delimiter, "columns": columns, **split}
    if table is not None:
        return scan_dataframe(table, root, **labels)
    if source == "csv":
        return scan_table(root, csv, **labels)
    if multi_label:
        raise DataError("multi_label: true needs labels from a table (data.source: csv); class folders give each "
                        "image one label.")
    if columns:
        raise DataError("data.columns renames a table's columns, but data.source is folder; set data.source: csv "
                        "(and data.csv: <your table>), or remove data.columns.")
    return scan_folder(root, **split)
