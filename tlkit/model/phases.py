"""Training phases as Lightning callbacks with their own state, as Lightning's BaseFinetuning keeps its own.

TransferModule hands them to the Trainer itself (configure_callbacks), so a plain `lightning.Trainer` gets them, a
user's override of a module hook (on_train_epoch_start without super()) cannot switch them off, and they compose
with Lightning's own callbacks (StochasticWeightAveraging, ModelCheckpoint, EarlyStopping) and tlkit's WeightEMA:

- StagedUnfreezing: each training epoch starts in the strategy's phase for it (requires_grad per layer group, eval()
  for frozen modules); the LR gating stays in the scheduler. It also says, in one warning, when a user's own
  optimizer dropped the strategy's parameter groups.
- FrozenBatchNorm: frozen means frozen. BatchNorm layers held in eval() keep their running statistics whatever else
  runs: Lightning's SWA resets every BatchNorm's statistics and re-estimates them from forward passes that, on a
  probe's cached features, never reach the backbone; this puts the frozen ones back.
- FeatureCachePhase: cached features serve only the epochs the strategy leaves the backbone frozen; an epoch that
  trains it and still reads cached features stops in one line.
- TuneThresholds: after fit, a multi-label model's per-class decision thresholds are tuned on the validation split.
(lp_ft's closed-form probe, the fourth, is tlkit.model.lpft.ClosedFormProbe.)
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

log = logging.getLogger(__name__)

FLATTENED_GROUPS = ("{cls}.configure_optimizers returned an optimizer with {got} parameter group(s); the {kind} "
                    "strategy trains with {want} ({names}) at their own LRs. Build it from self.optimizer_groups() "
                    "to keep them: torch.optim.SGD(self.optimizer_groups(), lr=self.lr).")


class StagedUnfreezing(L.Callback):
    """Applies the strategy's phase at fit start (the epoch a resume restores) and at every training epoch start.

    State: the epoch whose phase is applied (saved with the trainer's checkpoint)."""

    def __init__(self) -> None:
        self.epoch: int | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, trainer.current_epoch)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _check_groups(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, trainer.current_epoch)

    def _apply(self, pl_module: L.LightningModule, epoch: int) -> None:
        pl_module.set_phase(epoch)
        self.epoch = int(epoch)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = state_dict.get("epoch")


def _check_groups(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """One warning when the optimizer trains in fewer groups than the strategy plans at different LRs (a user's
    own configure_optimizers over self.parameters(), or LightningCLI's --optimizer)."""
    specs = pl_module.group_specs
    if len({s.lr_mult for s in specs if s.unfreeze_epoch is not None}) < 2 or not trainer.optimizers:
        return
    groups = trainer.optimizers[0].param_groups
    if len(groups) >= len([s for s in specs if s.unfreeze_epoch is not None]):
        return
    names = ", ".join(s.name for s in specs if s.unfreeze_epoch is not None)
    message = FLATTENED_GROUPS.format(cls=type(pl_module).__name__, got=len(groups), kind=pl_module.strategy.kind,
                                      want=len(specs), names=names)
    warnings.warn(message, UserWarning, stacklevel=2)


class FrozenBatchNorm(L.Callback):
    """BatchNorm layers in eval() while the model trains are frozen; their running statistics are kept as they were
    when they froze, and put back if anything changed them (StochasticWeightAveraging's update_bn resets them all).

    State: the statistics of the frozen layers (rebuilt from the model at fit start, so not saved)."""

    def __init__(self) -> None:
        self.kept: dict[str, dict[str, torch.Tensor]] = {}

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.kept = {}
        self._keep(pl_module)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep(pl_module)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        if batch_idx == 0:  # after every on_train_epoch_start hook, whichever callback order the trainer has
            self._keep(pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep(pl_module)

    def _keep(self, pl_module: L.LightningModule) -> None:
        """Record the statistics of layers that just froze, restore those of layers still frozen, forget thawed."""
        if not pl_module.training:  # a model in eval() altogether says nothing about which layers are frozen
            return
        frozen = {name: bn for name, bn in pl_module.named_modules() if isinstance(bn, _BatchNorm)
                  and not bn.training and bn.track_running_stats}
        self.kept = {name: stats for name, stats in self.kept.items() if name in frozen}
        restored = 0
        for name, bn in frozen.items():
            if name not in self.kept:
                self.kept[name] = {k: v.detach().clone() for k, v in _statistics(bn).items()}
            elif _restore(bn, self.kept[name]):
                restored += 1
        if restored:
            log.info("kept the running statistics of %d frozen BatchNorm layer(s) that another callback reset (SWA "
                     "re-estimates only the trained ones)", restored)


def _statistics(bn: _BatchNorm) -> dict[str, torch.Tensor]:
    return {"running_mean": bn.running_mean, "running_var": bn.running_var,
            "num_batches_tracked": bn.num_batches_tracked}


def _restore(bn: _BatchNorm, kept: dict[str, torch.Tensor]) -> bool:
    """Put `kept` back into `bn`'s buffers when they differ; True when they did."""
    current = _statistics(bn)
    if all(current[k] is not None and torch.equal(current[k], v.to(current[k].device)) for k, v in kept.items()):
        return False
    for key, value in kept.items():
        device = current[key].device if current[key] is not None else value.device
        setattr(bn, key, value.detach().clone().to(device))  # SWA replaced the tensors; a fresh copy either way
    return True


class FeatureCachePhase(L.Callback):
    """The feature-cache phase ends when the strategy says: an epoch that trains the backbone must read images.

    The datamodule serves cached features for the plan's leading epochs and switches to images by the epoch its
    samplers are told; a loader that loses the epoch (a replaced sampler) would keep serving features to a
    backbone that should train. The first batch of each epoch is checked; such a run stops in one line.
    State: the epochs that read cached inputs."""

    def __init__(self) -> None:
        self.cached_epochs: list[int] = []

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        if batch_idx != 0 or not isinstance(batch, (tuple, list)) or not batch:
            return
        inputs, epoch = batch[0], trainer.current_epoch
        cached = isinstance(inputs, dict) or (isinstance(inputs, torch.Tensor) and inputs.ndim == 2)
        if not cached:
            return
        if epoch not in self.cached_epochs:
            self.cached_epochs.append(epoch)
        served = pl_module.cache_plan(trainer.max_epochs if trainer.max_epochs not in (None, -1) else 2**31).epochs
        if epoch >= served:
            from tlkit.errors import DataError

            raise DataError(f"epoch {epoch} trains the backbone but its batches are cached features (the cache serves "
                            f"epochs 0-{served - 1}); the loader lost the epoch (a replaced sampler?): use "
                            "ImageFolderDataModule's own loaders, or cache=False.")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"cached_epochs": list(self.cached_epochs)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cached_epochs = list(state_dict.get("cached_epochs", []))


class TuneThresholds(L.Callback):
    """After fit, a multi-label model's per-class decision thresholds maximise each class's F1 on the datamodule's
    validation split (TransferModule.tune_thresholds); a fit without a datamodule keeps them. State: the tuned
    thresholds."""

    def __init__(self) -> None:
        self.thresholds: list[float] | None = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule is None or trainer.sanity_checking or trainer.interrupted:
            return
        self.thresholds = pl_module.tune_thresholds(trainer.datamodule)
        log.info("decision thresholds tuned on val (best F1 per class): %s",
                 ", ".join(f"{c} {t:.2f}" for c, t in zip(pl_module.classes, self.thresholds)))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.thresholds = state_dict.get("thresholds")
