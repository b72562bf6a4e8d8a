"""EMA of weights: validate and save the averaged model, keep training the raw one (timm's ModelEmaV3).

Swapped in for validation and left in place until the next training step, so the checkpoints written at the end of
validation (best.ckpt, last.ckpt) hold the EMA weights that were validated; evaluate/predict/export use them with no
extra step. The raw training weights travel in the callback's checkpoint state, so a resume continues training them.
At the end of fit the module holds the EMA weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from timm.utils import ModelEmaV3
from torch import nn
from typing_extensions import override


def _trained(module: L.LightningModule) -> nn.Module:
    return nn.ModuleDict({"backbone": module.backbone, "head": module.head})


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class WeightEMA(Callback):
    """Exponential moving average of backbone + head with decay warm-up (1 - (1 + step)^-2/3, capped at `decay`):
    short transfer runs have a few hundred steps, and a fixed 0.999 would average mostly the initial weights."""

    def __init__(self, decay: float = 0.999):
        self.decay = decay
        self.ema: ModelEmaV3 | None = None
        self._raw: dict[str, torch.Tensor] | None = None  # training weights while the EMA ones are swapped in
        self._restored: dict[str, Any] | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ema = ModelEmaV3(_trained(pl_module), decay=self.decay, use_warmup=True)
        if self._restored is not None:  # resume: the checkpoint's model weights are the EMA ones
            self.ema.module.load_state_dict(_trained(pl_module).state_dict())
            _trained(pl_module).load_state_dict(self._restored["raw"])
            self._restored = None

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._swap_out(pl_module)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ema.update(_trained(pl_module), step=trainer.global_step)

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is None or trainer.state.fn != "fit":  # trainer.validate() alone has no EMA
            return
        if self._raw is None:
            self._raw = _clone(_trained(pl_module).state_dict())
            _trained(pl_module).load_state_dict(self.ema.module.state_dict())

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is not None and self._raw is None:
            _trained(pl_module).load_state_dict(self.ema.module.state_dict())

    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._raw is not None:
            _trained(pl_module).load_state_dict(self._raw)
            self._raw = None

    @override
    def state_dict(self) -> dict[str, Any]:
        # Saved while the EMA weights are swapped in: the model's state_dict is the EMA, these are the raw ones.
        return {"raw": self._raw} if self._raw is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict if state_dict.get("raw") is not None else None
