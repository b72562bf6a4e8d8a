"""User-facing errors: one line of cause, then the fix. Never an assert."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TlkitError(Exception):
    """Base of every error tlkit raises on purpose."""


class RecipeError(TlkitError, ValueError):
    """A recipe file or override is invalid; the message lists every problem at once."""


class DataError(TlkitError, ValueError):
    """The image folder cannot be used as given."""


class DataNotFoundError(TlkitError, FileNotFoundError):
    """A data folder or file does not exist."""


class BackboneError(TlkitError, ValueError):
    """Unknown backbone name or weights that cannot be loaded."""


class CheckpointError(TlkitError, ValueError):
    """A checkpoint is missing its tlkit metadata or cannot be loaded safely."""


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean X?' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


class StorageError(TlkitError, ValueError):
    """A search storage URL that cannot be parsed or opened (the message never shows its password)."""


class TTAError(TlkitError, ValueError):
    """An unknown or contradictory test-time augmentation policy."""


class ExportError(TlkitError, ValueError):
    """An export could not be written or failed its parity check."""


class TrainingDivergedError(TlkitError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped before applying that update."""


class ReportError(TlkitError, ValueError):
    """A folder given to `tlkit report` is not a run directory, or the report cannot be written where asked."""
