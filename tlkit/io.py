"""Files: one atomic-write helper, one figure saver and one file hash for the whole package.

Every file tlkit writes goes through `atomic_path`: the content lands in a fresh temp file created exclusively
(`tempfile.mkstemp`, O_EXCL, unpredictable name) in the destination's folder, is flushed to disk, then renamed over
the destination. A kill mid-write leaves the old file intact; a symlink planted at a guessable temp name cannot
redirect the write.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once at import, not while other threads create files
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block succeeds it replaces `path` (fsynced, normal permissions).

    For libraries that write to a file name (safetensors, torch.onnx, matplotlib). On an exception the temp file is
    removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed without syncing
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared like any other file
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None or exc.filename == str(path):
            raise
        # A full or read-only disk hit while writing the temp file: name the file the user asked for.
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO[Any]]:
    """`open(path, mode)` whose result appears at `path` only when the block completes (mode "w" or "wb")."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files; mode must be 'w' or 'wb', got {mode!r}.")
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to `path` atomically; returns the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def atomic_save(path: str | Path, save: Callable[[str], object]) -> Path:
    """Call `save(temp_name)` (e.g. `lambda p: save_file(state, p)`), then move the result to `path` atomically."""
    with atomic_path(path) as tmp:
        save(str(tmp))
    return Path(path)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection: a class named
# '=HYPERLINK(...)' would run when predictions.csv is opened). Such text cells get a leading apostrophe.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """`value` for a CSV cell: text a spreadsheet would run as a formula gets a leading ' (numbers, negative ones
    included, are left as they are)."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def write_csv_rows(f: IO[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write rows to an open text file as CSV, every cell through csv_safe: the one CSV writer of tlkit's outputs
    (predictions, per-class metrics, evaluation tables)."""
    csv.writer(f, lineterminator="\n").writerows([csv_safe(cell) for cell in row] for row in rows)


def save_figure(fig: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Write a matplotlib figure to `path` atomically (format from the suffix) and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        atomic_save(path, lambda name: fig.savefig(name, dpi=dpi, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path


def cache_dir() -> Path:
    """Where converted weights live: $TLKIT_CACHE, else $XDG_CACHE_HOME/tlkit, else ~/.cache/tlkit."""
    if os.environ.get("TLKIT_CACHE"):
        return Path(os.environ["TLKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tlkit"


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read in blocks: a local path or an fsspec URL (s3://...). The one content hash
    behind duplicate detection (doctor, training's preflight) and a run's data fingerprint, so both agree."""
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
