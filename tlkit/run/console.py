"""What a run prints: Lightning's progress bar on a terminal; one line per epoch when output goes to a file or CI.

Carriage-return progress bars written to a log file turn every refresh into text (a 30-epoch quickstart logged
~200 KB); a line per epoch keeps the log readable and small.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any

import lightning as L
from typing_extensions import override

log = logging.getLogger("tlkit")

SHOWN = ("train_loss", "train_acc", "val_loss", "val_acc", "val_map")


def interactive() -> bool:
    """True when stdout is a terminal (where progress bars redraw in place)."""
    return sys.stdout.isatty()


def progress_bars(requested: bool) -> bool:
    """Show progress bars only when asked for (trainer.progress_bar) and on a terminal."""
    return requested and interactive()


class EpochLines(L.Callback):
    """One log line per finished epoch: its number, the metrics a user follows, and how long it took.

    Printed when the next epoch starts (or training ends): only then has Lightning aggregated the epoch's train
    metrics; at validation end or the callbacks' train-epoch end they still hold the previous epoch's values.
    """

    def __init__(self) -> None:
        self._started: float | None = None

    def _report(self, trainer: L.Trainer, epoch: int) -> None:
        if self._started is None or not trainer.is_global_zero:
            return
        values = trainer.callback_metrics
        parts = [f"{name} {_fmt(name, values[name])}" for name in SHOWN if name in values]
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        log.info("epoch %d/%s  %s  (%.1f s)", epoch + 1, epochs, "  ".join(parts), time.perf_counter() - self._started)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, trainer.current_epoch - 1)
        self._started = time.perf_counter()

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, trainer.current_epoch - 1)
        self._started = None


def _fmt(name: str, value: Any) -> str:
    value = float(value)
    return f"{value:.2%}" if name.endswith(("_acc", "_map")) else f"{value:.4f}"


@contextmanager
def quiet_intended_warnings(*patterns: str):
    """Mute the warnings Lightning gives about states tlkit sets on purpose (plus `patterns`)."""
    with warnings.catch_warnings():
        # Lightning suggests more workers than a 2-core machine has; the recipe's num_workers is deliberate.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # The run dir already holds recipe.yaml and classes.json; the CSV logger only manages metrics.csv.
        warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
        # Lightning's own use of a torch API that torch deprecated; nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        # A frozen backbone is in eval mode on purpose (frozen means frozen: BatchNorm statistics never move).
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
        for pattern in patterns:
            warnings.filterwarnings("ignore", message=pattern)
        yield
