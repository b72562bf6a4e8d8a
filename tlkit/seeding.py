"""Randomness keyed by position in the run, never by history, so a run resumed from a checkpoint replays exactly what
an uninterrupted run would have done.

Three sources of randomness need this, because Lightning restores weights, optimizer and schedule but no RNG state:
- the training order: EpochSampler draws it from (seed, epoch); Lightning calls set_epoch before every epoch;
- per-sample randomness (augmentation, the cached view drawn): the sampler hands out (index, epoch) pairs and the
  dataset seeds that sample from them. DataLoader workers would otherwise carry their RNG from epoch to epoch
  (persistent workers), and a resumed run's fresh workers would start elsewhere;
- the training step (dropout, drop-path, Mixup/CutMix draws): BatchSeeding reseeds python, numpy and torch from
  (seed, epoch, batch index) before each step.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset, Sampler
from typing_extensions import override


def derive_seed(*parts: object) -> int:
    """A 32-bit seed that depends only on `parts` (numpy's global seed must be below 2**32)."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def takes_epoch_indices(dataset: Dataset) -> bool:
    """Datasets whose __getitem__ accepts (index, epoch) and seeds that sample from it (ImageDataset,
    CachedFeatures) declare `epoch_indexed = True`."""
    return bool(getattr(dataset, "epoch_indexed", False))


class EpochSampler(Sampler):
    """A permutation of range(n) (or n class-balanced draws with replacement, given `weights`) that depends only on
    (seed, epoch). With `with_epoch` it yields (index, epoch) pairs for an epoch-indexed dataset.

    Lightning calls set_epoch before each epoch, also through its DistributedSamplerWrapper under DDP."""

    def __init__(self, n: int, *, seed: int, weights: Sequence[float] | None = None, with_epoch: bool = False):
        self.n, self.seed, self.with_epoch = n, seed, with_epoch
        self.weights = torch.as_tensor(list(weights), dtype=torch.double) if weights is not None else None
        if self.weights is not None and len(self.weights) != n:
            raise ValueError(f"weights has {len(self.weights)} entries for {n} samples.")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist()
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        for index in self.order():
            yield (index, self.epoch) if self.with_epoch else index


def split_epoch_index(index: int | tuple[int, int]) -> tuple[int, int | None]:
    """(index, epoch) from what a sampler handed out; epoch None for a plain index (evaluation, no seeding)."""
    if isinstance(index, tuple):
        return int(index[0]), int(index[1])
    return int(index), None


def seed_global_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BatchSeeding(Callback):
    """Reseed python, numpy and torch before every training step from (seed, epoch, batch index): dropout masks and
    Mixup draws then do not depend on what ran before (validation, a previous process)."""

    def __init__(self, seed: int):
        self.seed = seed

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        seed_global_rngs(derive_seed(self.seed, "step", trainer.current_epoch, batch_idx, trainer.global_rank))
