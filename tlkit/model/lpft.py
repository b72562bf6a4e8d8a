"""lp_ft's linear probe, done as Kumar et al. 2022 do it: the head is fitted to convergence (closed-form L-BFGS
logistic regression on the frozen backbone's cached features) before the first fine-tune epoch, so the probe costs
one pass of the backbone and none of the run's epochs.

A Lightning callback that TransferModule hands the Trainer itself (configure_callbacks), so a plain
`lightning.Trainer().fit(module, ImageFolderDataModule(...))` probes first exactly as `tlkit train` does: the
datamodule extracts the features in setup(), this fits the head at fit start.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from tlkit.errors import TlkitError

log = logging.getLogger(__name__)


class ProbeError(TlkitError, ValueError):
    """The closed-form probe cannot run (no cached features, or a head that is not one linear layer)."""


class ClosedFormProbe(L.Callback):
    """At fit start, fit the module's linear head on the datamodule's cached training features (all views).

    Skipped when the fit resumes from a checkpoint (its head is already fine-tuned). `info` holds the solver's
    choice of L2 strength, its held-out accuracy and the probe's accuracy on the cached validation features.
    """

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return
        features = _cached_features(trainer.datamodule)
        datamodule = trainer.datamodule
        task = pl_module.task
        weight, bias, info = _solve(features, pl_module, seed=int(getattr(datamodule, "seed", 0)))
        # Every DDP rank solved the same problem; rank 0's answer is the one all replicas keep.
        weight, bias = trainer.strategy.broadcast((weight, bias), src=0)
        final = pl_module.head[-1]
        with torch.no_grad():
            final.weight.copy_(weight.to(final.weight))
            final.bias.copy_(bias.to(final.bias))
        val_x, val_y = features.val.usable()
        if len(val_y):
            logits = torch.cat([rows.float() @ weight.T + bias for rows in val_x[0].chunks(4096)])  # in batches
            info[task.monitor] = task.score(logits, val_y)
            log.info("lp_ft probe: closed-form head, val %s %.2f%% before fine-tuning", task.metric_label,
                     100 * info[task.monitor])
        self.info = info


def _cached_features(datamodule: Any) -> Any:
    features = getattr(datamodule, "feature_splits", lambda: None)()
    if features is None:
        raise ProbeError("lp_ft with probe: closed_form fits the head on cached features, but the datamodule "
                         "extracted none; fit with tlkit's ImageFolderDataModule, or use probe: sgd.")
    return features


def _solve(features: Any, module: Any, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from tlkit.model.probe import fit_logistic_head

    head_config = getattr(module, "head_config", None)
    if head_config is not None and (problem := module.strategy.unmet_needs(head_hidden=head_config.hidden)):
        raise ProbeError(f"{problem} (got head.hidden {list(head_config.hidden)}).")
    views, labels = features.train.usable()
    smoothing, weight = module.optim_config.label_smoothing, module.class_weights

    def fine_tune_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # what training_step minimises
        return module.task.loss(logits, targets, smoothing=smoothing, weight=weight)

    return fit_logistic_head(views, labels, num_classes=len(module.classes), seed=seed, task=module.task,
                             fine_tune_loss=fine_tune_loss)
