"""Acting on an audit without touching the data: a table's own column names (data.columns), images left out of
training (data.exclude) and labels overridden (data.relabel), applied to the scan where it is built.

The user's folder and table are only read. What was applied is recorded on the scan (`FolderScan.curation`) for the
run's provenance; the changed training set and labels also change the data fingerprint.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from tlkit.data.scan import FolderScan, relative_name
from tlkit.data.settings import DEFAULT_LABEL_DELIMITER
from tlkit.errors import DataError, DataNotFoundError, did_you_mean

TABLE_NAMES = ("path", "label", "split")  # the columns tlkit reads; data.columns maps a table's own names to them
SUGGESTED = "suggested"  # the column of tlkit audit's findings.csv that data.relabel reads when there is no label
MAX_LISTED = 3


def rename_columns(columns: list[str], mapping: Mapping[str, str] | None, name: str) -> list[str]:
    """The header with the table's own names replaced by tlkit's (mapping: tlkit name -> the table's name)."""
    if not mapping:
        return columns
    unknown = sorted(set(mapping) - set(TABLE_NAMES))
    if unknown:
        raise DataError(f"data.columns maps {', '.join(map(repr, unknown))}; expected keys among "
                        f"{', '.join(TABLE_NAMES)}.{did_you_mean(unknown[0], TABLE_NAMES)}")
    back = {theirs: ours for ours, theirs in mapping.items()}
    missing = [theirs for theirs in back if theirs not in columns]
    if missing:
        raise DataError(f"{name}: data.columns names column {missing[0]!r}, which the header does not have (found "
                        f"{', '.join(map(repr, columns))}).{did_you_mean(missing[0], columns)}")
    clash = [c for c in columns if c in mapping and c not in back and mapping[c] != c]
    if clash:
        raise DataError(f"{name}: the header has a {clash[0]!r} column and data.columns maps {clash[0]} to "
                        f"{mapping[clash[0]]!r}; rename one of them so each role has one column.")
    return [back.get(c, c) for c in columns]


def read_paths(source: str | Path | Sequence[str], root: str | Path) -> list[str]:
    """Absolute paths listed by `source`: a CSV with a path column (audit's findings.csv), a text file with one
    path per line, or a list of paths; relative paths are relative to the data root."""
    if isinstance(source, (list, tuple)):
        written = [str(p) for p in source]
    else:
        header, rows = _read_table(source)
        if header is None:
            written = rows
        else:
            written = [row["path"] for row in rows]
    return [_absolute(p, root) for p in written if p.strip()]


def read_relabels(source: str | Path, root: str | Path) -> dict[str, str]:
    """path (absolute) -> the new label as written (class name, or a;b for multi-label) from a CSV with path and
    label columns, or audit's findings.csv (its suggested column); rows with an empty label are ignored."""
    header, rows = _read_table(source)
    column = "label" if header and "label" in header else SUGGESTED if header and SUGGESTED in header else None
    if column is None:
        raise DataError(f"{source}: data.relabel needs a CSV with columns path,label (or tlkit audit's findings.csv "
                        f"with path,suggested); found {', '.join(header or ['no header'])}.")
    return {_absolute(row["path"], root): row[column].strip() for row in rows if row[column].strip()}


def _read_table(source: str | Path) -> tuple[list[str] | None, list]:
    """(header, rows as dicts) for a CSV whose first line has a path column; (None, lines) for a plain list."""
    path = Path(source)
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist; data.exclude / data.relabel name a CSV (path column) or a "
                                "text file of image paths, relative to the recipe's folder.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = list(csv.reader(f))
    header = [c.strip() for c in lines[0]] if lines else []
    if "path" not in header:
        return None, [line[0] for line in lines if line]
    return header, [dict(zip(header, line)) for line in lines[1:] if any(c.strip() for c in line)]


def _absolute(written: str, root: str | Path) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(root), os.path.expanduser(written.strip())))


def curate(scan: FolderScan, *, exclude: str | Path | Sequence[str] | None = None, relabel: str | Path | None = None,
           label_delimiter: str = DEFAULT_LABEL_DELIMITER) -> FolderScan:
    """The scan with `exclude`d images left out of training (val and test keep theirs, so scores stay comparable)
    and `relabel`led images given their new label in every split. Every listed path must be in the scan."""
    if exclude is None and relabel is None:
        return scan
    root = scan.data_root()
    record: dict = {}
    train, val, test = scan.train, scan.val, scan.test
    if relabel is not None:
        fixes = read_relabels(relabel, root)
        _check_known(fixes, scan, "data.relabel", relabel)
        labels = {path: _label(text, scan, path, label_delimiter) for path, text in fixes.items()}
        train, val, test = ([(p, labels.get(os.path.normpath(os.path.abspath(p)), y)) for p, y in split]
                            for split in (train, val, test))
        changed = sum(1 for split in (scan.train, scan.val, scan.test) for p, y in split
                      if labels.get(os.path.normpath(os.path.abspath(p)), y) != y)
        record["relabel"] = {"file": str(relabel), "rows": len(fixes), "changed": changed,
                             "sha256": _digest(sorted((relative_name(p, root), str(y)) for p, y in labels.items()))}
    if exclude is not None:
        paths = set(read_paths(exclude, root))
        _check_known(dict.fromkeys(paths), scan, "data.exclude", exclude)
        kept = [(p, y) for p, y in train if os.path.normpath(os.path.abspath(p)) not in paths]
        record["exclude"] = {"file": str(exclude) if not isinstance(exclude, (list, tuple)) else "list",
                             "listed": len(paths), "left_out_of_training": len(train) - len(kept),
                             "sha256": _digest(sorted(relative_name(p, root) for p in paths))}
        train = kept
    if not train:
        raise DataError(f"data.exclude leaves no training images (all {len(scan.train)} are listed); list fewer.")
    return replace(scan, train=train, val=val, test=test, curation=record)


def _check_known(listed: Mapping[str, object], scan: FolderScan, setting: str, source: object) -> None:
    known = {os.path.normpath(os.path.abspath(p)) for split in (scan.train, scan.val, scan.test) for p, _ in split}
    unknown = sorted(set(listed) - known)
    if unknown:
        shown = ", ".join(relative_name(p, scan.data_root()) for p in unknown[:MAX_LISTED])
        more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        name = source if not isinstance(source, (list, tuple)) else "the list"
        raise DataError(f"{setting}: {len(unknown)} path(s) in {name} are not images of this data ({shown}{more}); "
                        "paths are relative to data.root, as tlkit audit writes them.")


def _label(text: str, scan: FolderScan, path: str, delimiter: str) -> int | tuple[int, ...]:
    """A label as written (class name, or names joined by the delimiter) as the scan's class index(es)."""
    names = [n.strip() for n in text.split(delimiter) if n.strip()] if scan.multi_label else [text.strip()]
    unknown = [n for n in names if n not in scan.classes]
    if unknown:
        raise DataError(f"data.relabel gives {relative_name(path, scan.data_root())} the label {unknown[0]!r}, "
                        f"which is not a class (classes: {', '.join(scan.classes)}).{did_you_mean(unknown[0], scan.classes)}")
    ids = sorted({scan.classes.index(n) for n in names})
    return tuple(ids) if scan.multi_label else ids[0]


def _digest(items: list) -> str:
    return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()
