"""Surviving faults during training: atomic checkpoint writes, a NaN/inf loss guard and a data-health guard (plain
Lightning plugins and callbacks with typed arguments; tlkit.run.fit wires them up, a Lightning project can too)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from tlkit.errors import DataError, TrainingDivergedError
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
            except RuntimeError as exc:
                # torch's zip writer turns an exception inside write() into "unexpected pos": raise the real cause.
                # A Ctrl-C/SIGTERM landing mid-save must stay an interrupt (exit 130/143 and the --resume hint).
                cause = writer.error or exc.__context__
                if isinstance(cause, KeyboardInterrupt):
                    raise cause from None
                if isinstance(cause, OSError) and cause is writer.error:
                    raise OSError(cause.errno, cause.strerror, str(path)) from None
                raise


class _KeepWriteError:
    """A file's write() that remembers the first exception it raised (an OSError, or an interrupt)."""

    def __init__(self, f: Any):
        self.f = f
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except (OSError, KeyboardInterrupt) as exc:
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


class DataHealthGuard(Callback):
    """Count the samples each epoch actually trained and validated on; stop when an epoch had none, or when more than
    `max_bad_fraction` of its images failed to decode (files deleted, moved or truncated after the scan).

    Under data.on_bad_image: skip a bad file is dropped from its batch (never replaced), so a vanished data folder
    would otherwise train and validate on nothing and still report success. Missing = the batches' nominal size
    (the loader's batch_size, the last one capped by the dataset length) minus the samples that arrived.
    """

    def __init__(self, max_bad_fraction: float = 0.1):
        self.max_bad_fraction = max_bad_fraction
        self.skipped = {"train": 0, "val": 0}  # whole run, for the summary and metrics.json
        self._seen = {"train": 0, "val": 0}
        self._batches = {"train": 0, "val": 0}

    def _start(self, split: str) -> None:
        self._seen[split] = self._batches[split] = 0

    def _count(self, split: str, batch: Any) -> None:
        targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if torch.is_tensor(targets):
            self._seen[split] += len(targets)
            self._batches[split] += 1

    def _check(self, trainer: L.Trainer, split: str, loaders: Any) -> None:
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        batch_size = getattr(loader, "batch_size", None)
        sampler = getattr(loader, "sampler", None)
        if not batch_size or not hasattr(sampler, "__len__"):
            return  # an iterable dataset or a custom loader: nothing to count against
        if self._batches[split] == 0 and not len(sampler):
            return  # an empty split (reported elsewhere)
        expected = min(self._batches[split] * batch_size, len(sampler)) if self._batches[split] else len(sampler)
        missing = max(0, expected - self._seen[split])
        self.skipped[split] += missing
        what = "training" if split == "train" else "validation"
        epoch = trainer.current_epoch + 1
        if self._seen[split] == 0:
            raise DataError(f"epoch {epoch}: none of the {expected} {what} images could be read (moved, deleted or "
                            "unreadable files?); check the data folder, then resume the run with tlkit train --resume.")
        if missing > self.max_bad_fraction * expected:
            raise DataError(f"epoch {epoch}: {missing} of {expected} {what} images failed to decode (more than "
                            f"data.max_bad_fraction={self.max_bad_fraction:g}); see skipped_mid_run.txt in the run "
                            "directory, repair or remove those files, or raise data.max_bad_fraction.")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("train")

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._count("train", batch)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, "train", trainer.train_dataloader)

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val")

    @override
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._count("val", batch)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, "val", trainer.val_dataloaders)


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
