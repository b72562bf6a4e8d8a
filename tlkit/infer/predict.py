"""Predict labels for image files and folders: CSV (or JSON) of path, top-k labels and probabilities; for a
multi-label model, each image's label set (the classes at or over their thresholds) and every class's probability."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from typing_extensions import Self

from tlkit.errors import DataError, DataNotFoundError
from tlkit.infer.inference import InferenceResult
from tlkit.io import atomic_open, atomic_path, write_csv_rows


def top_k_rows(result: InferenceResult, paths: Sequence[str], classes: Sequence[str], k: int) -> list[dict]:
    """One dict per predicted file: path and its k most probable labels with probabilities, best first."""
    k = max(1, min(k, len(classes)))
    order = np.argsort(-result.probs, axis=1, kind="stable")[:, :k]
    return [
        {
            "path": str(paths[index]),
            "labels": [classes[j] for j in order[row]],
            "probs": [float(result.probs[row, j]) for j in order[row]],
        }
        for row, index in enumerate(result.indices)
    ]


def label_set_rows(result: InferenceResult, paths: Sequence[str], classes: Sequence[str],
                   thresholds: Sequence[float]) -> list[dict]:
    """Multi-label: one dict per predicted file with its label set (most probable first, possibly empty), their
    probabilities, and every class's probability."""
    from tlkit.model.thresholds import decide

    chosen = decide(result.probs, thresholds)
    rows = []
    for row, index in enumerate(result.indices):
        probs = result.probs[row]
        order = [j for j in np.argsort(-probs, kind="stable") if chosen[row, j]]
        rows.append({"path": str(paths[index]), "labels": [classes[j] for j in order],
                     "probs": [float(probs[j]) for j in order],
                     "probabilities": {name: float(p) for name, p in zip(classes, probs)}})
    return rows


log = logging.getLogger(__name__)
STDOUT = "-"
LABEL_SEPARATOR = ";"  # between the labels of a set in one CSV cell, as in a multi-label CSV source


def check_outputs(paths: Sequence[str | Path | None], *, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing output file unless `overwrite` ('-' is stdout)."""
    for path in paths:
        if path is not None and str(path) != STDOUT and Path(path).exists() and not overwrite:
            raise DataError(f"{path} already exists; pass --overwrite to replace it, or choose another --out/--json.")


def _csv_table(rows: Sequence[dict], k: int) -> tuple[list[str], list[list]]:
    """(header, body) of the predictions CSV for `rows` (see write_predictions_csv)."""
    if rows and "probabilities" in rows[0]:
        classes = list(rows[0]["probabilities"])
        header = ["path", "labels", "probs", *(f"p_{c}" for c in classes)]
        body = [[r["path"], LABEL_SEPARATOR.join(r["labels"]), LABEL_SEPARATOR.join(f"{p:.6f}" for p in r["probs"]),
                 *(f"{r['probabilities'][c]:.6f}" for c in classes)] for r in rows]
    else:
        header = ["path"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "prob")]
        body = [[r["path"], *[x for label, p in zip(r["labels"], r["probs"]) for x in (label, f"{p:.6f}")]]
                for r in rows]
    return header, body


def write_predictions_csv(rows: Sequence[dict], path: str | Path, k: int) -> Path | str:
    """Columns: path, label_1, prob_1, ..., label_k, prob_k; multi-label rows: path, labels and probs (the label set,
    ';'-separated), then p_<class> for every class. path '-' writes to stdout. Written atomically."""
    header, body = _csv_table(rows, k)
    if str(path) == STDOUT:
        write_csv_rows(sys.stdout, [header, *body])
        sys.stdout.flush()
        return STDOUT
    path = Path(path)
    _atomic(path, lambda f: write_csv_rows(f, [header, *body]))
    return path


class PredictionsCsv:
    """The predictions CSV, written as pieces of the work finish: rows go to a temporary file beside `path`
    (flushed after each piece) that replaces `path` atomically at the end, so an existing file survives a failed
    run. Stopped midway (Ctrl-C, SIGTERM), the rows done are kept as `<path>.partial`. path '-' is stdout.
    Use as a context manager."""

    def __init__(self, path: str | Path, k: int):
        self.path, self.k = path, k
        self._file: Any = None
        self._atomic: Any = None
        self._tmp: Path | None = None

    def __enter__(self) -> Self:
        if str(self.path) != STDOUT:
            _check_folder(Path(self.path))
            self._atomic = atomic_path(self.path)
            self._tmp = self._atomic.__enter__()  # a read-only folder fails here, before any work
        return self

    def write(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        header, body = _csv_table(rows, self.k)
        if self._file is None:
            self._file = sys.stdout if self._tmp is None else open(self._tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
            write_csv_rows(self._file, [header])
        write_csv_rows(self._file, body)
        self._file.flush()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._atomic is None:
            return
        if self._file is not None:
            self._file.close()
        if exc_type is not None and not issubclass(exc_type, Exception) and self._file is not None:
            partial = Path(f"{self.path}.partial")  # stopped: keep what was done, never over the old file
            os.replace(self._tmp, partial)
            log.warning("stopped: the rows predicted so far are in %s", partial)
        self._atomic.__exit__(exc_type, exc, tb)


class PredictionsJson:
    """write_predictions_json's file, written as rows arrive (the rows are never all in memory): the same JSON text,
    atomically at the end; a failed or stopped run leaves no file (half a JSON document is not readable). Use as a
    context manager; `finish(skipped)` writes the skipped list and closes the document."""

    def __init__(self, path: str | Path, *, thresholds: dict[str, float] | None = None):
        self.path, self.thresholds = Path(path), thresholds
        self._atomic: Any = None
        self._file: Any = None
        self._rows = 0

    def __enter__(self) -> Self:
        _check_folder(self.path)
        self._atomic = atomic_open(self.path, newline="")
        self._file = self._atomic.__enter__()
        head = f'  "thresholds": {_nested(self.thresholds, 1)},\n' if self.thresholds is not None else ""
        self._file.write('{\n' + head + '  "predictions": [')
        return self

    def write(self, rows: Sequence[dict]) -> None:
        for row in rows:
            self._file.write(("\n" if not self._rows else ",\n") + "    " + _nested(row, 2))
            self._rows += 1

    def finish(self, skipped: Sequence[tuple[str, str]]) -> None:
        listed = [{"path": p, "reason": why} for p, why in skipped]
        self._file.write(("\n  ]" if self._rows else "]") + f',\n  "skipped": {_nested(listed, 1)}\n}}\n')

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._atomic.__exit__(exc_type, exc, tb)


def _nested(value: Any, depth: int) -> str:
    """json.dumps(value, indent=2) as it appears `depth` levels deep in an indented document."""
    return json.dumps(value, indent=2).replace("\n", "\n" + "  " * depth)


def write_predictions_json(rows: Sequence[dict], skipped: Sequence[tuple[str, str]], path: str | Path, *,
                           thresholds: dict[str, float] | None = None) -> Path:
    """{"predictions": rows, "skipped": [...]}, plus the per-class "thresholds" the label sets used (multi-label)."""
    path = Path(path)
    data = {**({"thresholds": thresholds} if thresholds is not None else {}), "predictions": list(rows),
            "skipped": [{"path": p, "reason": why} for p, why in skipped]}
    _atomic(path, lambda f: f.write(json.dumps(data, indent=2) + "\n"))
    return path


def _check_folder(path: Path) -> None:
    if not path.parent.is_dir():
        raise DataNotFoundError(f"Output folder {str(path.parent)!r} does not exist; create it or choose another --out.")


def _atomic(path: Path, write) -> None:
    _check_folder(path)
    with atomic_open(path, newline="") as f:
        write(f)
