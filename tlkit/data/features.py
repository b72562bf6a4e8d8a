"""Cached backbone features as training inputs: what ImageFolderDataModule serves while the backbone is frozen.

A frozen backbone computes the same features every epoch, so a linear probe (and lp_ft's probe phase) needs one
backbone forward per image (and augmented view) in total; tlkit.data.cache keeps them on disk between runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tlkit.data.augment import TrainAugment, build_eval_transform, build_train_transform
from tlkit.data.cache import (
    CachedActivations,
    CachedFeatures,
    FeatureCache,
    code_versions,
    default_feature_dir,
    extract_batches,
    extraction_batch_size,
    targets,
    view_seed,
    weights_fingerprint,
)
from tlkit.data.preprocessing import EVAL_PREPROCESSING_ID, Preprocessing
from tlkit.data.protocol import CachePlan
from tlkit.data.scan import FolderScan, relative_name
from tlkit.data.settings import CacheConfig
from tlkit.errors import DataError
from tlkit.seeding import split_epoch_index

log = logging.getLogger(__name__)

CACHE_KEY_FORMAT = 4  # bump when the meaning or layout of cached rows changes (3: views seeded by relative path;
# 4: appended shards, tlkit.data.shards; older entries live under other keys and are never read)
ACTIVATION_DTYPE = torch.float16  # a frozen prefix's activations on disk and in memory: half the bytes of float32


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


def extract_splits(scan: FolderScan, plan: CachePlan, pre: Preprocessing, *, augment: TrainAugment,
                   cache: CacheConfig, seed: int, run: Extraction, train_pre: Preprocessing | None = None
                   ) -> FeatureSplits:
    """Features of every train image (cache.views augmented views, or 1 when the augmentation is deterministic) and
    every val image through the model's frozen network (`plan.network`), from the disk cache where the file is
    unchanged. `train_pre`: the training views' preprocessing when it differs from the eval one (a smaller training
    size).

    A plan with a frozen prefix (`plan.prefix`, strategy finetune_top) gets that prefix's activations instead,
    stored float16, after checking their size against cache.max_gb."""
    train_pre = train_pre or pre
    started = time.perf_counter()
    split = plan.prefix
    network = plan.network
    dtype = ACTIVATION_DTYPE if split is not None else torch.float32
    store = FeatureCache(_cache_directory(cache))
    fingerprint = weights_fingerprint(network)
    base_key = _base_key(plan.name, pre, fingerprint)
    if split is not None:  # the cut point and storage type are part of what a row means
        base_key = {**base_key, "prefix": list(split.prefix_names), "dtype": str(dtype)}

    root = scan.data_root()
    batch = extraction_batch_size(run.device, run.eval_batch_size)  # processes sharing extraction split by batch

    def compute(transform, desc: str, view: int | None = None):
        return _forward(network, transform, run, desc, seed=seed, view=view, dtype=dtype, root=root)

    train_paths = [p for p, _ in scan.train]
    val_paths = [p for p, _ in scan.val]
    num_views = 1 if augment.is_deterministic else cache.views
    what = "feature cache"
    if split is not None:
        what = "prefix cache"
        check_activation_size(split, train=(len(train_paths), num_views, train_pre.input_size),
                              val=(len(val_paths), pre.input_size), max_gb=cache.max_gb)
    eval_transform = build_eval_transform(pre)
    eval_key = {**base_key, "transform": "eval"}
    if augment.is_deterministic and train_pre == pre:  # the train transform is the eval transform (a test proves it)
        # One pass over train + val: one loader, one set of worker start-ups.
        both = store.rows(eval_key, train_paths + val_paths, compute(eval_transform, f"{what}: train + val"),
                          batch_size=batch)
        views = [both.subset(np.arange(len(train_paths)))]
        val = both.subset(np.arange(len(train_paths), len(both)))
    else:
        train_transform = build_train_transform(train_pre, augment)
        augment_key = {**base_key, "transform": augment.model_dump(mode="json"), "seed": seed,
                       **({"train_preprocessing": train_pre.to_dict()} if train_pre != pre else {})}
        views = [
            store.rows({**augment_key, "view": v}, train_paths,
                       compute(train_transform, f"{what}: train view {v + 1}/{num_views}", v), batch_size=batch)
            for v in range(num_views)  # a bigger eval patch with deterministic augmentation: one view is exact
        ]
        val = store.rows(eval_key, val_paths, compute(eval_transform, f"{what}: val"), batch_size=batch)
    info = {"used": True, "views": len(views), "disk": store.directory is not None, "from_disk": store.stats.hits,
            "extracted": store.stats.misses, "seconds": round(time.perf_counter() - started, 2),
            **({"from_other_processes": store.stats.from_peers} if store.stats.from_peers else {})}
    if split is not None:
        info["prefix"] = {"trained_top": list(split.top_names), "shape": list(views[0].shape[1:]),
                          "bytes": sum(math.prod(t.shape) * dtype.itemsize for t in (*views, val))}
    log.info("%s: %d train x %d view(s) + %d val; %d rows from disk, %d extracted, %.1f s", what,
             len(train_paths), len(views), len(val_paths), info["from_disk"], info["extracted"], info["seconds"])
    num_classes = len(scan.classes) if scan.multi_label else None  # multi-label: (N, C) multi-hot targets
    rows = CachedActivations if split is not None else CachedFeatures
    splits = FeatureSplits(
        train=rows(views, targets([y for _, y in scan.train], num_classes), seed=seed,
                   paths=train_paths),
        val=rows([val], targets([y for _, y in scan.val], num_classes), paths=val_paths),
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
    key = {**_base_key(module.cache_plan(0).name, pre, weights_fingerprint(module.embedder)), "transform": "eval"}
    paths = [p for p, _ in scan.train]
    rows = store.rows(key, paths, _forward(module.embedder, build_eval_transform(pre), run, "features: train"),
                      batch_size=extraction_batch_size(run.device, run.eval_batch_size))
    num_classes = len(scan.classes) if scan.multi_label else None
    features = CachedFeatures([rows], targets([y for _, y in scan.train], num_classes), paths=paths)
    info = {"from_disk": store.stats.hits, "extracted": store.stats.misses,
            "seconds": round(time.perf_counter() - started, 2),
            **({"from_other_processes": store.stats.from_peers} if store.stats.from_peers else {})}
    return features, info


def _cache_directory(cache: CacheConfig) -> Path | str | None:
    return (cache.dir or default_feature_dir()) if cache.disk else None


def _base_key(name: str, pre: Preprocessing, fingerprint: str) -> dict:
    """What every cache entry of this backbone and preprocessing shares; the transform (and view) complete it."""
    return {"format": CACHE_KEY_FORMAT, "backbone": name, "weights": fingerprint,
            "preprocessing": pre.to_dict(), "versions": code_versions(),
            "eval": EVAL_PREPROCESSING_ID}  # features from another eval resize must not be reused


def _forward(backbone: Any, transform: Any, run: Extraction, desc: str, *, seed: int = 0, view: int | None = None,
             dtype: torch.dtype = torch.float32, root: str | None = None):
    """paths -> the backbone's features of them through `transform`, batch after batch (reseeded per file and view
    when augmented, from the file's path relative to `root`, the data root)."""
    def forward(paths: list[str]) -> Iterator[torch.Tensor]:
        seeds = None if view is None else [view_seed(seed, view, relative_name(p, root)) for p in paths]
        return extract_batches(backbone, paths, transform, seeds=seeds, device=run.device,
                       batch_size=extraction_batch_size(run.device, run.eval_batch_size),
                       num_workers=run.num_workers, desc=desc, channels_last=run.channels_last, on_bad=run.on_bad,
                       progress=run.progress, dtype=dtype)
    return forward


def check_activation_size(split: Any, *, train: tuple[int, int, int], val: tuple[int, int], max_gb: float) -> int:
    """Log what the prefix cache will hold (images x views x activation shape, float16) and refuse it above max_gb.

    train = (images, views, input size), val = (images, input size). Returns the size in bytes."""
    (n_train, views, train_size), (n_val, val_size) = train, val
    train_shape, val_shape = split.output_shape(train_size), split.output_shape(val_size)
    per = ACTIVATION_DTYPE.itemsize
    total = per * (n_train * views * math.prod(train_shape) + n_val * math.prod(val_shape))
    shape = "x".join(map(str, train_shape))
    val_note = "" if val_shape == train_shape else f" (val at {val_size} px: {'x'.join(map(str, val_shape))})"
    log.info("prefix cache: %s images x %d view(s) + %s val x %s fp16%s = %s (after %s; trained: %s)",
             f"{n_train:,}", views, f"{n_val:,}", shape, val_note, _size(total), split.prefix_names[-1],
             ", ".join(split.top_names))
    if total > max_gb * 1e9:
        raise DataError(f"prefix cache would hold {_size(total)} (activations of shape {shape} for {n_train:,} "
                        f"images x {views} views + {n_val:,} val), above cache.max_gb: {max_gb}; lower cache.views "
                        "or the input size, raise strategy.train_top (a later cut has smaller activations), or "
                        "raise cache.max_gb if the disk allows it (training reads the rows a batch at a time).")
    return total


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.1f} MB"


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

    def __getitems__(self, indices: list) -> list:
        """A batch: one batched read when every index is in the cached phase (a batch is from one epoch)."""
        if indices and all((split_epoch_index(i)[1] or 0) < self.switch_epoch for i in indices):
            return self.features.__getitems__(indices)
        return [self[i] for i in indices]
