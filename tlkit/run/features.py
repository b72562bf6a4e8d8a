"""Cached backbone features as training input for linear probes (and the closed-form L-BFGS head)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch

from tlkit.data.augment import build_eval_transform, build_train_transform
from tlkit.data.cache import (
    CachedFeatures,
    FeatureCache,
    code_versions,
    default_feature_dir,
    extract,
    extraction_batch_size,
    extraction_device,
    view_seed,
    weights_fingerprint,
)
from tlkit.data.datamodule import (
    FeatureDataModule,
    ImageFolderDataModule,
    PhasedDataModule,
)
from tlkit.data.preprocessing import EVAL_PREPROCESSING_ID
from tlkit.model.module import TransferModule
from tlkit.recipe import Recipe

log = logging.getLogger(__name__)


def choose_training_inputs(
    recipe: Recipe, datamodule: ImageFolderDataModule, module: TransferModule
) -> tuple[L.LightningDataModule, dict]:
    """Images, or cached features when the strategy is a linear probe (or lp_ft's probe phase) and the cache can
    honour the recipe."""
    cached = module.strategy.cached_epochs(recipe.trainer.epochs)
    if cached == 0 or not recipe.cache.features:
        return datamodule, {"used": False}
    if recipe.mixing.enabled:
        log.warning("feature cache: Mixup/CutMix mix images, not features, so this linear probe trains on images "
                    "(uncached); set mixing alphas to 0 to use the cache.")
        return datamodule, {"used": False, "reason": "image-space mixing requested"}
    features, info = build_feature_datamodule(recipe, datamodule, module)
    if cached < recipe.trainer.epochs:  # features while the backbone is frozen, images once it fine-tunes
        return PhasedDataModule(features, datamodule, cached), {**info, "phase": "probe"}
    return features, info


def _drop_undecodable(finite: torch.Tensor, paths: list[str], bad_log: Path | None) -> torch.Tensor:
    """NaN feature rows mark files that failed to decode under data.on_bad_image: skip; list them and keep the rest."""
    bad = [p for p, ok in zip(paths, finite.tolist()) if not ok]
    if bad and bad_log is not None:
        with open(bad_log, "a") as f:
            f.writelines(f"{p}\tfailed to decode during feature extraction\n" for p in bad)
    return finite


def build_feature_datamodule(
    recipe: Recipe, datamodule: ImageFolderDataModule, module: TransferModule
) -> tuple[FeatureDataModule, dict]:
    """Cached backbone features for the train (K views) and val splits, as a datamodule of tensors."""
    started = time.perf_counter()
    pre = module.preprocessing
    directory = (recipe.cache.dir or default_feature_dir()) if recipe.cache.disk else None
    cache = FeatureCache(directory)
    base_key = {"format": 2, "backbone": recipe.backbone.name, "weights": weights_fingerprint(module.backbone),
                "preprocessing": pre.to_dict(), "versions": code_versions(), "eval": EVAL_PREPROCESSING_ID}

    device = extraction_device(recipe.trainer.accelerator)

    def compute(transform, desc: str, view: int | None = None):
        def run(paths: list[str]) -> torch.Tensor:
            seeds = None if view is None else [view_seed(recipe.seed, view, p) for p in paths]
            return extract(module.backbone, paths, transform, seeds=seeds, device=device,
                           batch_size=extraction_batch_size(device, datamodule.eval_batch_size),
                           num_workers=datamodule.num_workers, desc=desc, channels_last=module.channels_last,
                           on_bad=datamodule.on_bad_image)
        return run

    train_paths = [p for p, _ in datamodule.scan.train]
    val_paths = [p for p, _ in datamodule.scan.val]
    eval_transform = build_eval_transform(pre)
    eval_key = {**base_key, "transform": "eval"}
    if recipe.augment.is_deterministic:  # the train transform is then the eval transform (a test proves it)
        # One pass over train + val: one loader, one set of worker start-ups.
        both = cache.features(eval_key, train_paths + val_paths, compute(eval_transform, "features: train + val"))
        views, val = [both[: len(train_paths)]], both[len(train_paths):]
    else:
        train_transform = build_train_transform(pre, recipe.augment)
        augment_key = {**base_key, "transform": recipe.augment.model_dump(mode="json"), "seed": recipe.seed}
        views = [
            cache.features({**augment_key, "view": v}, train_paths,
                           compute(train_transform, f"features: train view {v + 1}/{recipe.cache.views}", v))
            for v in range(recipe.cache.views)
        ]
        val = cache.features(eval_key, val_paths, compute(eval_transform, "features: val"))
    info = {"used": True, "views": len(views), "disk": directory is not None, "from_disk": cache.stats.hits,
            "extracted": cache.stats.misses, "seconds": round(time.perf_counter() - started, 2)}
    log.info("feature cache: %d train x %d view(s) + %d val; %d rows from disk, %d extracted, %.1f s",
             len(train_paths), len(views), len(val_paths), info["from_disk"], info["extracted"], info["seconds"])
    views = torch.stack(views)
    keep_train = _drop_undecodable(views.isfinite().all(dim=2).all(dim=0), train_paths, datamodule.bad_log)
    keep_val = _drop_undecodable(val.isfinite().all(dim=1), val_paths, datamodule.bad_log)
    feature_dm = FeatureDataModule(
        CachedFeatures(views[:, keep_train], [label for (_, label), k in zip(datamodule.scan.train, keep_train) if k],
                       seed=recipe.seed),
        CachedFeatures(val[keep_val], [label for (_, label), k in zip(datamodule.scan.val, keep_val) if k]),
        batch_size=datamodule.batch_size, eval_batch_size=datamodule.eval_batch_size, seed=recipe.seed,
        split=datamodule.split_info(),
    )
    return feature_dm, info


def fit_head_closed_form(module: TransferModule, features: FeatureDataModule, seed: int) -> dict:
    """Fit the linear head by L-BFGS logistic regression on the cached training features (all views)."""
    from tlkit.model.probe import fit_logistic_head

    train = features.train_set
    weight, bias, info = fit_logistic_head(train.views, train.labels, num_classes=len(module.classes), seed=seed)
    final = module.head[-1]
    with torch.no_grad():
        final.weight.copy_(weight)
        final.bias.copy_(bias)
    return info

