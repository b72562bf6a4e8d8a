"""Recipe -> the training datamodule: the recipe's cache, balance and run settings as ImageFolderDataModule
arguments (the datamodule itself serves cached features; a plain Lightning project gets the same path), plus the
closed-form L-BFGS head on those features."""

from __future__ import annotations

from pathlib import Path

import torch

from tlkit.data.cache import extraction_device
from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.model.module import TransferModule
from tlkit.recipe import Recipe


def choose_training_inputs(
    recipe: Recipe, datamodule: ImageFolderDataModule, module: TransferModule, *,
    bad_log: str | Path | None = None, first_epoch: int = 0,
) -> tuple[ImageFolderDataModule, dict]:
    """The datamodule `module` trains on (same scan as `datamodule`), set up for the recipe's fit, and its cache
    info. Set up here, before any Trainer, so the closed-form probe, tlkit check and lr-find can read its datasets;
    the Trainer's own setup() then finds the features already extracted for this backbone and reuses them."""
    train_dm = datamodule.replace(
        preprocessing=module.preprocessing, augment=recipe.augment, cache=recipe.cache, seed=recipe.seed,
        balance=recipe.data.balance, bad_log=bad_log, first_epoch=first_epoch)
    train_dm.setup_for(module, stage="fit", epochs=recipe.trainer.epochs,
                       device=extraction_device(recipe.trainer.accelerator))
    return train_dm, train_dm.cache_info


def fit_head_closed_form(module: TransferModule, datamodule: ImageFolderDataModule, seed: int) -> dict:
    """Fit the linear head by L-BFGS logistic regression on the cached training features (all views); one sigmoid
    per class when the data is multi-label."""
    from tlkit.model.probe import fit_logistic_head, fit_selected_head

    features = datamodule.feature_splits()
    if features is None:
        raise ValueError("the closed-form probe needs cached features: strategy linear_probe, cache.features on, "
                         "mixing off (the recipe checks this).")
    views, labels = features.train.usable()
    kwargs = {"num_classes": len(module.classes), "seed": seed, "task": module.task}
    keep = module.strategy.kept_feature_fraction()
    weight, bias, info = (fit_selected_head(views, labels, keep=keep, **kwargs) if keep is not None
                          else fit_logistic_head(views, labels, **kwargs))
    final = module.head[-1]
    with torch.no_grad():
        final.weight.copy_(weight)
        final.bias.copy_(bias)
    return info
