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
            torch.save(checkpoint, f)


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
