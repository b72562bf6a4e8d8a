"""Surviving faults during training: atomic checkpoint writes and a NaN/inf loss guard (plain Lightning plugins and
callbacks with typed arguments; tlkit.run.fit wires them up)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from tlkit.errors import TrainingDivergedError
from tlkit.io import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save through tlkit.io.atomic_open (temp file in the same folder, fsync, rename): a kill while saving leaves
    the previous checkpoint intact (the rename is atomic on one filesystem), never a half-written one."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_open(path, "wb") as f:
            writer = _KeepWriteError(f)
            try:
                torch.save(checkpoint, writer)
            except RuntimeError:
                # torch's zip writer turns a failed write (disk full...) into "unexpected pos"; raise the real cause.
                if writer.error is None:
                    raise
                raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None


class _KeepWriteError:
    """A file's write() that remembers the first OSError it raised."""

    def __init__(self, f: Any):
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


class FiniteLossGuard(Callback):
    """Stop on a NaN/inf loss before its backward pass, so no update ever writes NaN weights and the checkpoints
    already on disk (written at the end of each completed epoch) stay the last good ones."""

    def __init__(self, lr: float | None = None):
        self.lr = lr
        self._inputs_finite = True

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._inputs_finite = bool(torch.isfinite(inputs).all()) if torch.is_tensor(inputs) else True

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).all():
            return
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch})"
        if not self._inputs_finite:
            cause = "this batch's inputs contain NaN/inf values (bad input data); check the images or cached features"
        else:
            lr = f" (optim.lr={self.lr:g})" if self.lr is not None else ""
            cause = (f"the inputs are finite, so the likely cause is a learning rate too high{lr}: lower it "
                     "(e.g. 10x) or add schedule.warmup_epochs")
        raise TrainingDivergedError(
            f"Training loss became {float(loss.detach()):g} at {where}; {cause}. Stopped without applying this update; "
            "checkpoints/ (if any) hold the last completed epoch."
        )


class InterruptNotice(Callback):
    """Remembers a Ctrl-C inside trainer.fit/validate and the run directory it hit.

    Lightning catches KeyboardInterrupt itself: it shuts down gracefully (the checkpoints of completed epochs stay)
    and calls sys.exit(1) with its notice logged at INFO, so a caller only sees SystemExit. The CLI reads this
    callback to tell an interrupt from other exits and to print the `--resume` command.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self.run_dir: str | None = None
        self.epoch: int | None = None

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        self.interrupted = True
        self.epoch = trainer.current_epoch
        logger = trainer.logger
        if logger is not None and getattr(logger, "save_dir", None):
            self.run_dir = str(logger.save_dir)  # fit's CSVLogger writes metrics.csv at the run directory's top
