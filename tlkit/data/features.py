"""Cached backbone features as training inputs: what ImageFolderDataModule serves while the backbone is frozen.

A frozen backbone computes the same features every epoch, so a linear probe (and lp_ft's probe phase) needs one
backbone forward per image (and augmented view) in total; tlkit.data.cache keeps them on disk between runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tlkit.data.augment import TrainAugment, build_eval_transform, build_train_transform
from tlkit.data.cache import (
    CachedFeatures,
    FeatureCache,
    code_versions,
    default_feature_dir,
    extract,
    extraction_batch_size,
    targets,
    view_seed,
    weights_fingerprint,
)
from tlkit.data.preprocessing import EVAL_PREPROCESSING_ID, Preprocessing
from tlkit.data.scan import FolderScan
from tlkit.data.settings import CacheConfig
from tlkit.seeding import split_epoch_index

log = logging.getLogger(__name__)

CACHE_KEY_FORMAT = 2  # bump when the meaning of a cached row changes


@dataclass
class FeatureSplits:
    """Cached features of a scan's train (K views) and val splits, rows aligned with scan.train / scan.val."""

    train: CachedFeatures
    val: CachedFeatures
    fingerprint: str  # weights_fingerprint of the backbone they came from
    preprocessing: Preprocessing
    info: dict = field(default_factory=dict)
    train_preprocessing: Preprocessing | None = None  # the training views' (a smaller training size); None = same


@dataclass(frozen=True)
class Extraction:
    """How to run the backbone over images: where, in what batches, with how many decoding workers."""

    device: torch.device
    eval_batch_size: int
    num_workers: int
    channels_last: bool = True
    on_bad: str = "error"
    bad_log: Path | None = None
    progress: bool = True  # a progress bar while extracting (off when the trainer shows none, e.g. not a terminal)


def backbone_name(module: Any) -> str:
    """The architecture name for the cache key: TransferModule's hparams, else timm's pretrained_cfg, else the
    class name (the weights fingerprint is the real identity; the name keeps entries readable and stable)."""
    hparams = getattr(module, "hparams", {}) or {}
    backbone = hparams.get("backbone") if isinstance(hparams, dict) or hasattr(hparams, "get") else None
    if isinstance(backbone, dict) and backbone.get("name"):
        return str(backbone["name"])
    cfg = getattr(module.backbone, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(module.backbone).__name__)


def extract_splits(scan: FolderScan, module: Any, pre: Preprocessing, *, augment: TrainAugment, cache: CacheConfig,
                   seed: int, run: Extraction, train_pre: Preprocessing | None = None) -> FeatureSplits:
    """Features of every train image (cache.views augmented views, or 1 when the augmentation is deterministic) and
    every val image through `module.backbone`, from the disk cache where the file is unchanged. `train_pre`: the
    training views' preprocessing when it differs from the eval one (a smaller training size)."""
    train_pre = train_pre or pre
    started = time.perf_counter()
    store = FeatureCache(_cache_directory(cache))
    fingerprint = weights_fingerprint(module.backbone)
    base_key = _base_key(module, pre, fingerprint)

    def compute(transform, desc: str, view: int | None = None):
        return _forward(module.backbone, transform, run, desc, seed=seed, view=view)

    train_paths = [p for p, _ in scan.train]
    val_paths = [p for p, _ in scan.val]
    eval_transform = build_eval_transform(pre)
    eval_key = {**base_key, "transform": "eval"}
    if augment.is_deterministic and train_pre == pre:  # the train transform is the eval transform (a test proves it)
        # One pass over train + val: one loader, one set of worker start-ups.
        both = store.features(eval_key, train_paths + val_paths, compute(eval_transform, "features: train + val"))
        views, val = [both[: len(train_paths)]], both[len(train_paths):]
    else:
        train_transform = build_train_transform(train_pre, augment)
        augment_key = {**base_key, "transform": augment.model_dump(mode="json"), "seed": seed,
                       **({"train_preprocessing": train_pre.to_dict()} if train_pre != pre else {})}
        views = [
            store.features({**augment_key, "view": v}, train_paths,
                           compute(train_transform, f"features: train view {v + 1}/{cache.views}", v))
            for v in range(1 if augment.is_deterministic else cache.views)  # a bigger eval patch: one view is exact
        ]
        val = store.features(eval_key, val_paths, compute(eval_transform, "features: val"))
    info = {"used": True, "views": len(views), "disk": store.directory is not None, "from_disk": store.stats.hits,
            "extracted": store.stats.misses, "seconds": round(time.perf_counter() - started, 2)}
    log.info("feature cache: %d train x %d view(s) + %d val; %d rows from disk, %d extracted, %.1f s",
             len(train_paths), len(views), len(val_paths), info["from_disk"], info["extracted"], info["seconds"])
    num_classes = len(scan.classes) if scan.multi_label else None  # multi-label: (N, C) multi-hot targets
    splits = FeatureSplits(
        train=CachedFeatures(torch.stack(views), targets([y for _, y in scan.train], num_classes), seed=seed,
                             paths=train_paths),
        val=CachedFeatures(val, targets([y for _, y in scan.val], num_classes), paths=val_paths),
        fingerprint=fingerprint, preprocessing=pre, info=info, train_preprocessing=train_pre,
    )
    _list_undecodable(splits, run.bad_log)
    return splits


def extract_train_eval_features(scan: FolderScan, module: Any, pre: Preprocessing, *, cache: CacheConfig,
                                run: Extraction) -> tuple[CachedFeatures, dict]:
    """(features, info) of every train image through the eval transform only (one deterministic view, no val):
    a quick probe measurement. The rows share the cache entry extract_splits fills for deterministic input, so a
    later run with the same backbone, weights and preprocessing reads them from disk."""
    started = time.perf_counter()
    store = FeatureCache(_cache_directory(cache))
    key = {**_base_key(module, pre, weights_fingerprint(module.backbone)), "transform": "eval"}
    paths = [p for p, _ in scan.train]
    rows = store.features(key, paths, _forward(module.backbone, build_eval_transform(pre), run, "features: train"))
    num_classes = len(scan.classes) if scan.multi_label else None
    features = CachedFeatures(rows[None], targets([y for _, y in scan.train], num_classes), paths=paths)
    info = {"from_disk": store.stats.hits, "extracted": store.stats.misses,
            "seconds": round(time.perf_counter() - started, 2)}
    return features, info


def _cache_directory(cache: CacheConfig) -> Path | str | None:
    return (cache.dir or default_feature_dir()) if cache.disk else None


def _base_key(module: Any, pre: Preprocessing, fingerprint: str) -> dict:
    """What every cache entry of this backbone and preprocessing shares; the transform (and view) complete it."""
    return {"format": CACHE_KEY_FORMAT, "backbone": backbone_name(module), "weights": fingerprint,
            "preprocessing": pre.to_dict(), "versions": code_versions(),
            "eval": EVAL_PREPROCESSING_ID}  # features from another eval resize must not be reused


def _forward(backbone: Any, transform: Any, run: Extraction, desc: str, *, seed: int = 0, view: int | None = None):
    """paths -> the backbone's features of them through `transform` (reseeded per file and view when augmented)."""
    def forward(paths: list[str]) -> torch.Tensor:
        seeds = None if view is None else [view_seed(seed, view, p) for p in paths]
        return extract(backbone, paths, transform, seeds=seeds, device=run.device,
                       batch_size=extraction_batch_size(run.device, run.eval_batch_size),
                       num_workers=run.num_workers, desc=desc, channels_last=run.channels_last, on_bad=run.on_bad,
                       progress=run.progress)
    return forward


def _list_undecodable(splits: FeatureSplits, bad_log: Path | None) -> None:
    """Files whose rows are missing (they failed to decode under on_bad_image: skip) go to the bad-file list once,
    at extraction; their rows are then skipped batch after batch, never replaced."""
    bad = [p for part in (splits.train, splits.val) for p, ok in zip(part.paths, part.finite.tolist()) if not ok]
    for path in bad:
        log.warning("skipped %s: failed to decode during feature extraction", path)
    if bad and bad_log is not None:
        with open(bad_log, "a") as f:
            f.writelines(f"{p}\tfailed to decode during feature extraction\n" for p in bad)


class PhasedDataset(Dataset):
    """Cached features for epochs before `switch_epoch`, images from then on (lp_ft: the probe phase trains the head
    on a frozen backbone, so its features are the cached ones; fine-tuning needs images).

    Why one dataset that picks per epoch rather than Lightning's reload_dataloaders_every_n_epochs: the loaders'
    samplers already hand out (index, epoch) pairs (tlkit.seeding) and Lightning calls set_epoch on the train and
    val samplers before each epoch, so the switch needs no Trainer argument (a plain `L.Trainer()` works), keeps
    one loader with one batch count (the LR schedule's steps per epoch stay fixed), and resumes exactly from any
    epoch. Both sources index the same samples in the same order."""

    epoch_indexed = True

    def __init__(self, features: CachedFeatures, images: Dataset, switch_epoch: int):
        if len(features) != len(images):
            raise ValueError(f"features ({len(features)}) and images ({len(images)}) must hold the same samples.")
        self.features, self.images, self.switch_epoch = features, images, switch_epoch

    @property
    def labels(self) -> torch.Tensor:
        return self.features.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int | tuple[int, int]):
        _, epoch = split_epoch_index(index)
        # A plain index (no epoch: tlkit check, a direct look) reads the first phase, as epoch 0 would.
        source = self.features if (epoch or 0) < self.switch_epoch else self.images
        return source[index]
