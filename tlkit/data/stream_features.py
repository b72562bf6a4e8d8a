"""Cached features of a stream's items: tlkit.data.features.extract_splits for a LitData stream.

The backbone's (or a frozen prefix's) outputs per stored image, computed once and kept in the feature cache with the
item id `<root>/<split>#<position>@<split identity>` as each row's identity (FeatureCache identity=str), so a stream
written again gets new rows and a moved stream is recomputed. Read by StreamDataModule (a fit whose every epoch trains on the frozen network,
lp_ft's closed-form probe) and by strategy auto's held-out measurement.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from tlkit.data.features import Extraction, FeatureSplits
from tlkit.data.preprocessing import Preprocessing
from tlkit.data.protocol import CachePlan
from tlkit.data.settings import CacheConfig, TrainAugment
from tlkit.data.stream import StreamScan, decode_jpeg, litdata_module, split_identity
from tlkit.errors import DataError

log = logging.getLogger(__name__)


class _StreamItems(torch.utils.data.Dataset):
    """Items of one split by position, decoded and through `transform` (reseeded per item when `seeds` are given):
    what feature extraction reads. Random access into LitData's chunks, each worker opening the split itself."""

    def __init__(self, input_dir: str, positions: list[int], transform: Any, seeds: list[int] | None):
        self.input_dir, self.positions, self.transform, self.seeds = input_dir, positions, transform, seeds
        self._stream = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._stream is None:
            self._stream = litdata_module().StreamingDataset(self.input_dir)
        if self.seeds is not None:
            self.transform.reseed(self.seeds[index])
        return self.transform(decode_jpeg(self._stream[self.positions[index]]["image"]))


def _positions(ids: list[str]) -> list[int]:
    return [int(i.rsplit("#", 1)[1].split("@", 1)[0]) for i in ids]


@torch.no_grad()
def _extract(network: torch.nn.Module, dataset: _StreamItems, *, run: Extraction, desc: str,
             dtype: torch.dtype) -> torch.Tensor:
    """`network`'s outputs for every item of `dataset`, stored as `dtype` (the image path's tlkit.data.cache.extract,
    over stream items: a stream's JPEGs were decoded once when written, so none fails here)."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from tlkit.data.cache import extraction_batch_size

    home = next(network.parameters()).device
    network.eval().to(run.device)
    loader = DataLoader(dataset, batch_size=extraction_batch_size(run.device, run.eval_batch_size),
                        num_workers=run.num_workers)
    rows = []
    for images in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not run.progress):
        images = images.to(run.device)
        if run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = network(images)
        if not out.isfinite().all():
            raise DataError(f"{desc}: the backbone gave NaN/inf features; its weights or the input preprocessing "
                            "are broken, not the stream: check backbone.weights.")
        rows.append(out.to(device="cpu", dtype=dtype, memory_format=torch.contiguous_format))
    network.to(home)
    return torch.cat(rows)


def cached_stream_rows(store: Any, key: dict, ids: list[str], compute: Any, *, batch_size: int) -> torch.Tensor:
    """FeatureCache.features(key, ids, compute) with stream item ids as the rows' own identities (they carry the
    split's identity, so a stream written again gets new rows); `batch_size`: the batches `compute` runs in (the
    cache shares whole batches among DDP processes)."""
    return store.features(key, ids, compute, identity=str, batch_size=batch_size)


def extract_stream_features(root: str, scan: StreamScan, plan: CachePlan, pre: Preprocessing, *,
                            augment: TrainAugment, cache: CacheConfig, seed: int, run: Extraction,
                            train_pre: Preprocessing | None = None, splits: tuple[str, ...] = ("train", "val"),
                            ) -> FeatureSplits:
    """tlkit.data.features.extract_splits for a stream: the network's outputs for every train item (cache.views
    augmented views, 1 when the augmentation is deterministic) and val item, from the feature cache where the
    split is unchanged. `splits=("train",)`: the train items through the eval transform only, and no val (None):
    strategy auto's quick measurement."""
    from tlkit.data.augment import build_eval_transform, build_train_transform
    from tlkit.data.cache import (
        CachedActivations,
        CachedFeatures,
        FeatureCache,
        code_versions,
        default_feature_dir,
        extraction_batch_size,
        targets,
        view_seed,
        weights_fingerprint,
    )
    from tlkit.data.features import (
        ACTIVATION_DTYPE,
        CACHE_KEY_FORMAT,
        check_activation_size,
    )
    from tlkit.data.preprocessing import EVAL_PREPROCESSING_ID

    train_pre = train_pre or pre
    started = time.perf_counter()
    prefix = plan.prefix
    dtype = ACTIVATION_DTYPE if prefix is not None else torch.float32
    store = FeatureCache((cache.dir or default_feature_dir()) if cache.disk else None)
    fingerprint = weights_fingerprint(plan.network)
    base_key = {"format": CACHE_KEY_FORMAT, "backbone": plan.name, "weights": fingerprint,
                "preprocessing": pre.to_dict(), "versions": code_versions(), "eval": EVAL_PREPROCESSING_ID}
    if prefix is not None:
        base_key = {**base_key, "prefix": list(prefix.prefix_names), "dtype": str(dtype)}
    ids = {split: [f"{i}@{split_identity(root, split)}" for i, _ in getattr(scan, split)] for split in splits}
    only_eval = splits == ("train",)
    num_views = 1 if augment.is_deterministic or only_eval else cache.views
    what = "prefix cache" if prefix is not None else "feature cache"
    if prefix is not None:
        check_activation_size(prefix, train=(len(ids["train"]), num_views, train_pre.input_size),
                              val=(len(ids.get("val", [])), pre.input_size), max_gb=cache.max_gb)

    def compute(split: str, transform: Any, desc: str, view: int | None = None):
        def rows(wanted: list[str]) -> torch.Tensor:
            seeds = None if view is None else [view_seed(seed, view, i.rsplit("/", 1)[1].split("@")[0])
                                               for i in wanted]  # keyed by split#position, wherever the stream is
            return _extract(plan.network, _StreamItems(f"{root}/{split}", _positions(wanted), transform, seeds),
                            run=run, desc=desc, dtype=dtype)
        return rows

    eval_transform = build_eval_transform(pre)
    eval_key = {**base_key, "transform": "eval"}
    batch = extraction_batch_size(run.device, run.eval_batch_size)
    if only_eval or (augment.is_deterministic and train_pre == pre):
        views = [cached_stream_rows(store, eval_key, ids["train"], compute("train", eval_transform, f"{what}: train"),
                                    batch_size=batch)]
    else:
        train_transform = build_train_transform(train_pre, augment)
        augment_key = {**base_key, "transform": augment.model_dump(mode="json"), "seed": seed,
                       **({"train_preprocessing": train_pre.to_dict()} if train_pre != pre else {})}
        views = [cached_stream_rows(store, {**augment_key, "view": v}, ids["train"],
                                    compute("train", train_transform, f"{what}: train view {v + 1}/{num_views}", v),
                                    batch_size=batch)
                 for v in range(num_views)]
    val = (cached_stream_rows(store, eval_key, ids["val"], compute("val", eval_transform, f"{what}: val"),
                              batch_size=batch) if "val" in ids else None)
    info = {"used": True, "views": len(views), "disk": store.directory is not None, "from_disk": store.stats.hits,
            "extracted": store.stats.misses, "seconds": round(time.perf_counter() - started, 2)}
    log.info("%s: %d train x %d view(s) + %d val stream items; %d rows from disk, %d extracted, %.1f s", what,
             len(ids["train"]), len(views), len(ids.get("val", [])), info["from_disk"], info["extracted"],
             info["seconds"])
    rows = CachedActivations if prefix is not None else CachedFeatures
    return FeatureSplits(
        train=rows(torch.stack(views), targets([y for _, y in scan.train]), seed=seed, paths=ids["train"]),
        val=rows(val, targets([y for _, y in scan.val]), paths=ids["val"]) if val is not None else None,
        fingerprint=fingerprint, preprocessing=pre, info=info, train_preprocessing=train_pre)
