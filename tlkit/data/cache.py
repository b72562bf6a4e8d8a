"""Feature cache for linear probes: a frozen backbone's features computed once per image (and view), kept on disk.

With a frozen backbone every epoch would recompute the same features; the physical limit of a linear probe is one
backbone forward per image. Entries are keyed by backbone + weights fingerprint + preprocessing + transform + view;
inside an entry each row is keyed by the file's identity (path, size, mtime), so a changed file is recomputed and a
stale row is never used. Each row carries a CRC-32 of its bytes, checked on every read: a row damaged on disk (bit
flips, zeroed blocks) is recomputed with one warning, never trained on and never blamed on its image. A cache that
cannot be written (a full disk, a read-only folder) is one warning; the run goes on without it. Only the cache looks
at where a file is: the augmentation of a view is seeded by the file's
path relative to the data root, so a moved folder recomputes its rows and gets the same features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tlkit.data.images import BadSample, decode
from tlkit.data.shards import (
    NAN_SOURCE,
    FeatureViews,
    MemoryBlock,
    Rows,
    Shard,
    ShardError,
    ShardIndex,
    identity_digests,
    open_shard,
    save_shard,
    verify_rows,
)
from tlkit.errors import DataError
from tlkit.io import atomic_save, cache_dir
from tlkit.seeding import derive_seed, split_epoch_index

log = logging.getLogger(__name__)


def code_versions() -> dict[str, str]:
    """Library versions that shape the features: an upgrade must not reuse features computed by older code."""
    import albumentations
    import cv2
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "albumentations": albumentations.__version__,
            "opencv": cv2.__version__}


def default_feature_dir() -> Path:
    return cache_dir() / "features"


def file_identity(path: str | Path) -> str:
    """Path, size and modification time: any edit or replacement of the file changes it."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over every tensor of the module: the identity of the weights actually in use."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def view_seed(seed: int, view: int, name: str) -> int:
    """A stable per-(run seed, view, file) seed, `name` being the file's path relative to the data root
    (tlkit.data.scan.relative_name): the same augmented view whichever other files are extracted, and wherever the
    data folder is (an absolute path would give a copy of the same images other views)."""
    return derive_seed(seed, view, name)


class _ViewDataset(Dataset):
    """Decoded images through `transform`; with seeds, the transform is reseeded per image (reproducible views)."""

    def __init__(self, paths: Sequence[str], transform: Callable, seeds: Sequence[int] | None, on_bad: str = "error"):
        self.paths = list(paths)
        self.transform = transform
        self.seeds = list(seeds) if seeds is not None else None
        self.on_bad = on_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        if self.seeds is not None:
            self.transform.reseed(self.seeds[index])
        try:
            return self.transform(decode(self.paths[index]))
        except DataError:
            if self.on_bad == "error":
                raise
            return None  # data.on_bad_image: skip -> a NaN feature row, dropped by the caller


def _collate_views(batch: list) -> tuple[torch.Tensor | None, torch.Tensor]:
    good = torch.tensor([item is not None for item in batch])
    images = [item for item in batch if item is not None]
    return (torch.stack(images) if images else None), good


def extraction_batch_size(device: torch.device, eval_batch_size: int) -> int:
    """On CPU small batches keep decoding workers and the forward overlapped: for 398 hymenoptera JPEGs at 224 px on
    2 cores, batch 16 took 7.4-7.8 s against 10.4 s at 64. Accelerators prefer the large evaluation batch."""
    return min(16, eval_batch_size) if device.type == "cpu" else eval_batch_size


def extraction_device(accelerator: str) -> torch.device:
    """Where features are extracted, before Lightning moves the module: the GPU when the run would use one."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()  # features are inputs to the head; a trainable backbone (lp_ft) must not keep their graph
def extract_batches(backbone: torch.nn.Module, paths: Sequence[str], transform: Callable, *,
                    seeds: Sequence[int] | None, batch_size: int, num_workers: int, desc: str,
                    channels_last: bool = True, device: torch.device = torch.device("cpu"), on_bad: str = "error",
                    progress: bool = True, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """Outputs of `backbone` (pooled features, or a frozen prefix's activations) for `paths` through `transform`,
    one batch of rows at a time in the order of `paths`, stored as `dtype`: a caller that writes them away holds
    one batch, not all of them. on_bad="skip": a file that fails to decode gets a NaN row (the caller drops it);
    "error" raises DataError."""
    home = next(backbone.parameters()).device
    backbone.eval().to(device)
    loader = DataLoader(_ViewDataset(paths, transform, seeds, on_bad), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate_views)
    row_shape: tuple[int, ...] = (getattr(backbone, "num_features", 0),)
    try:
        for images, good in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
            out = None
            if images is not None:
                images = images.to(device)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                computed = backbone(images)
                if not computed.isfinite().all():  # NaN rows mark undecodable files only: never blame decoded ones
                    raise DataError(f"{desc}: the backbone gave NaN/inf features for images that decoded; its "
                                    "weights or the input preprocessing are broken, not the images: check "
                                    "backbone.weights.")
                out = computed.to(device="cpu", dtype=dtype, memory_format=torch.contiguous_format)
                if not out.isfinite().all():
                    raise DataError(f"{desc}: outputs exceed the range of {dtype} (max |value| "
                                    f"{float(computed.abs().max()):g}); cut the backbone elsewhere or use kind "
                                    "finetune.")
                row_shape = tuple(out.shape[1:])
                if bool(good.all()):
                    yield out
                    continue
            rows = torch.full((len(good), *row_shape), float("nan"), dtype=dtype)
            if out is not None:
                rows[good] = out
            yield rows
    finally:
        backbone.to(home)


def extract(backbone: torch.nn.Module, paths: Sequence[str], transform: Callable, **kwargs) -> torch.Tensor:
    """extract_batches as one tensor (len(paths), ...): for a few images (a test, a check), not a dataset."""
    batches = list(extract_batches(backbone, paths, transform, **kwargs))
    shapes = [b.shape[1:] for b in batches if b.reshape(len(b), -1).isfinite().all(dim=1).any()]
    dtype = kwargs.get("dtype", torch.float32)
    if not batches:
        return torch.empty((0, getattr(backbone, "num_features", 0)), dtype=dtype)
    shape = shapes[-1] if shapes else batches[-1].shape[1:]
    return torch.cat([b if b.shape[1:] == shape else torch.full((len(b), *shape), float("nan"), dtype=dtype)
                      for b in batches])


@dataclass
class CacheStats:
    hits: int = 0  # rows read from disk, checksums passed
    misses: int = 0  # rows this process computed
    from_peers: int = 0  # of the hits: rows other processes of a multi-process launch computed in this call


def row_checksums(features: torch.Tensor) -> list[int]:
    """CRC-32 of each row's bytes (any dtype): what a read checks before trusting a row."""
    flat = features.detach().cpu().contiguous().reshape(len(features), -1).view(torch.uint8).numpy()
    return [zlib.crc32(row) for row in flat]


@dataclass(frozen=True)
class ExtractionShare:
    """This process's part of a multi-process extraction: it computes every `world`-th batch of the missing rows from
    batch `rank` on, then `gather` (a collective: every process calls it) returns every process's list of undecodable rows."""

    rank: int
    world: int
    gather: Callable[[list[int]], list[list[int]]]


def current_share() -> ExtractionShare | None:
    """The share of this process when a torch.distributed process group of 2+ processes is set up, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None

    def gather(mine: list[int]) -> list[list[int]]:
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, mine)
        return out

    return ExtractionShare(dist.get_rank(), dist.get_world_size(), gather)


SHARD_BYTES = 64 * 2**20  # computed rows held before they are written as a shard: the extraction's memory bound
Compute = Callable[[list[str]], "torch.Tensor | Iterable[torch.Tensor]"]


class FeatureCache:
    """Rows of features per cache key, kept on disk as shards that only ever get added (see tlkit.data.shards):
    a run that adds images writes new shards and leaves the stored ones as they are. directory=None: off (rows are
    kept in memory). A write that fails (full disk, read-only folder) warns once and turns saving off.

    share: how a multi-process launch divides the rows to compute (default: the torch.distributed process group
    when one is set up, see current_share); each process computes its share, writes it as shards, and reads the
    others' shards. The result is the one a single process gets."""

    def __init__(self, directory: str | Path | None, *, share: ExtractionShare | None | str = "auto"):
        self.directory = Path(directory) if directory is not None else None
        self.stats = CacheStats()
        self.saving = directory is not None
        self._share = share
        self._opened: dict[Path, dict[str, ShardIndex | None]] = {}  # entry -> shard file -> index (None: unusable)

    def _entry(self, key: dict) -> Path | None:
        if self.directory is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.directory / digest

    def features(self, key: dict, paths: Sequence[str], compute: Compute, *,
                 identity: Callable[[str], str] = file_identity, batch_size: int = 1) -> torch.Tensor:
        """rows() as one tensor (len(paths), ...): for a few rows; datasets read rows() in batches."""
        return self.rows(key, paths, compute, identity=identity, batch_size=batch_size).tensor()

    def rows(self, key: dict, paths: Sequence[str], compute: Compute, *,
             identity: Callable[[str], str] = file_identity, batch_size: int = 1) -> Rows:
        """Rows for `paths` in order: stored rows whose identity still matches (file_identity: path, size and
        mtime; pass identity= for ids that are not files, e.g. str for a stream's row ids) and whose bytes pass
        their checksum, `compute` for the rest. `compute(paths)` returns their rows in order, as one tensor or an
        iterable of batches. Rows of files that failed to decode (NaN) are served as NaN, never stored.

        batch_size: the batches `compute` runs in. Processes sharing the work take whole batches of the rows to
        compute (batch i goes to process i mod world size), so every row is computed in the same batch as one
        process would compute it: the same bits, even from kernels whose rounding depends on the batch."""
        entry = self._entry(key)
        key_json = json.dumps(key, sort_keys=True)
        share = current_share() if self._share == "auto" else self._share
        if entry is None:
            share = None  # no disk to share rows through: every process computes what it needs
        # (a process that cannot save still joins every collective step; the others then compute its rows too)
        digests = identity_digests((identity(p) for p in paths), len(paths))
        result = _Result(len(paths))
        if share is not None:
            share.gather([])  # every process looks the entry up before any of them writes to it
        missing = self._resolve(entry, key_json, digests, result)
        if share is not None:
            share.gather([])
            starts = np.arange(share.rank * batch_size, len(missing), share.world * batch_size)
            mine = (np.concatenate([missing[i: i + batch_size] for i in starts]) if len(starts)
                    else missing[:0])
            self.stats.misses += len(mine)
            bad = self._compute(entry, key_json, [paths[i] for i in mine], mine, digests, compute, result)
            undecodable = {i for part in share.gather(bad) for i in part}
            result.source[np.asarray(sorted(undecodable), dtype=np.int64)] = NAN_SOURCE
            before = self.stats.hits
            missing = self._resolve(entry, key_json, digests, result,
                                    np.asarray([i for i in missing if i not in undecodable and
                                                result.source[i] == _UNSET], dtype=np.int64))
            self.stats.from_peers += self.stats.hits - before
            if len(missing):
                log.warning("feature cache: %d rows computed by other processes are not in %s (a cache folder "
                            "not shared by every process?); computing them here too", len(missing), self.directory)
        if len(missing):
            self.stats.misses += len(missing)
            self._compute(entry, key_json, [paths[i] for i in missing], missing, digests, compute, result)
        return result.rows()

    def _index(self, entry: Path, key_json: str) -> list[ShardIndex]:
        """The entry's usable shards, oldest first (a later shard's row replaces an earlier one of the same id)."""
        opened = self._opened.setdefault(entry, {})
        folder = entry / "shards"
        # a name starting with "." is a shard still being written (tlkit.io.atomic_path's temporary file)
        names = sorted(p.name for p in folder.glob("*.safetensors") if not p.name.startswith(".")) \
            if folder.is_dir() else []
        for name in names:
            if name in opened:
                continue
            try:
                opened[name] = open_shard(folder / name, key_json)
            except ShardError as exc:
                opened[name] = None
                if exc.old:
                    log.warning("feature cache entry %s has no valid row checksums (damaged, or written by an "
                                "older tlkit); recomputing it", entry)
                elif "another cache key" not in str(exc):
                    log.warning("feature cache entry %s is unreadable (%s); recomputing it", entry, exc)
        return [opened[n] for n in names if opened[n] is not None]

    def _resolve(self, entry: Path | None, key_json: str, digests: np.ndarray, result: _Result,
                 wanted: np.ndarray | None = None) -> np.ndarray:
        """Point `result`'s rows `wanted` (default all) at stored rows that pass their checksum; the positions
        left to compute."""
        wanted = np.arange(len(digests), dtype=np.int64) if wanted is None else wanted
        index = self._index(entry, key_json) if entry is not None else []
        if not index or not len(wanted):
            return wanted
        stored = np.concatenate([s.digests for s in index])
        shard_of = np.repeat(np.arange(len(index), dtype=np.int32), [len(s.digests) for s in index])
        row_of = np.concatenate([np.arange(len(s.digests), dtype=np.int64) for s in index])
        keys, first = np.unique(stored[::-1], return_index=True)  # newest first, so unique keeps the newest
        pick = len(stored) - 1 - first
        shard_of, row_of = shard_of[pick], row_of[pick]
        del stored, first, pick
        query = digests[wanted]
        at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        found = keys[at] == query
        good = np.zeros(len(wanted), dtype=bool)
        bad = 0
        for s in np.unique(shard_of[at[found]]).tolist():
            where = np.flatnonzero(found & (shard_of[at] == s))
            rows, inverse = np.unique(row_of[at[where]], return_inverse=True)
            ok = verify_rows(index[s].shard, rows, index[s].crcs[rows])[inverse]
            good[where] = ok
            bad += int((~ok).sum())
            base = result.add(index[s].shard)
            result.source[wanted[where[ok]]] = base
            result.offset[wanted[where[ok]]] = row_of[at[where[ok]]]
        if bad:
            log.warning("feature cache entry %s: %d of %d rows fail their checksum (damaged on disk); recomputing "
                        "them", entry, bad, int(found.sum()))
        self.stats.hits += int(good.sum())
        return wanted[~good]

    def _compute(self, entry: Path | None, key_json: str, paths: list[str], positions: np.ndarray,
                 digests: np.ndarray, compute: Compute, result: _Result) -> list[int]:
        """Compute rows `positions`, writing them as shards of at most SHARD_BYTES while they come; returns the
        positions whose rows are NaN (undecodable files)."""
        if not len(positions):
            return []
        out = compute(paths)
        chunks = [out] if isinstance(out, torch.Tensor) else out
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        held, done, undecodable = 0, 0, []
        for chunk in chunks:
            chunk = chunk.detach().cpu()
            at = positions[done: done + len(chunk)]
            done += len(chunk)
            finite = chunk.reshape(len(chunk), -1).isfinite().all(dim=1).numpy()
            if len(at) != len(chunk):
                break
            undecodable.extend(at[~finite].tolist())
            result.source[at[~finite]] = NAN_SOURCE
            result.note(tuple(chunk.shape[1:]), chunk.dtype, finite.any())
            if finite.any():
                rows = chunk.contiguous().numpy()[finite]
                pending.append((rows, at[finite]))
                held += rows.nbytes
            if held >= SHARD_BYTES:
                self._flush(entry, key_json, pending, digests, result)
                pending, held = [], 0
        if done != len(positions):
            raise ValueError(f"feature extraction returned {done} rows for {len(positions)} images.")
        self._flush(entry, key_json, pending, digests, result)
        return undecodable

    def _flush(self, entry: Path | None, key_json: str, pending: list[tuple[np.ndarray, np.ndarray]],
               digests: np.ndarray, result: _Result) -> None:
        if not pending:
            return
        rows = np.concatenate([r for r, _ in pending]) if len(pending) > 1 else pending[0][0]
        at = np.concatenate([p for _, p in pending])
        block: Shard | MemoryBlock | None = None
        if entry is not None and self.saving:
            block = self._write(entry, key_json, rows, digests[at])
        base = result.add(block if block is not None else MemoryBlock(rows))
        result.source[at] = base
        result.offset[at] = np.arange(len(at), dtype=np.int64)

    def _write(self, entry: Path, key_json: str, rows: np.ndarray, digests: np.ndarray) -> Shard | None:
        """One new shard file; its rows, identities and checksums commit together in one atomic rename."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.safetensors"
        path = entry / "shards" / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(path, lambda tmp: save_shard(tmp, rows, digests, key_json))
            index = open_shard(path, key_json)
        except (OSError, ShardError) as exc:
            self.saving = False
            reason = getattr(exc, "strerror", None) or exc
            log.warning("cannot save features in the cache %s (%s); going on without saving them. Free space "
                        "there, point cache.dir elsewhere, or set cache.disk: false.", self.directory, reason)
            return None
        self._opened.setdefault(entry, {})[name] = index
        return index.shard


_UNSET = -2  # a result row not resolved yet


class _Result:
    """The rows of one rows() call as they are found and computed: per row, a source and the row in it."""

    def __init__(self, n: int):
        self.source = np.full(n, _UNSET, dtype=np.int32)
        self.offset = np.zeros(n, dtype=np.int64)
        self.sources: list[Shard | MemoryBlock] = []
        self._numbers: dict[int, int] = {}
        self.row_shape: tuple[int, ...] | None = None
        self.dtype: torch.dtype | None = None
        self._real = False

    def add(self, block: Shard | MemoryBlock) -> int:
        if id(block) not in self._numbers:
            self._numbers[id(block)] = len(self.sources)
            self.sources.append(block)
            if isinstance(block, Shard):
                self.note(block.row_shape, torch.from_numpy(np.empty(0, block.dtype)).dtype, True)
        return self._numbers[id(block)]

    def note(self, row_shape: tuple[int, ...], dtype: torch.dtype, real: bool) -> None:
        if self.row_shape is None or (real and not self._real):
            self.row_shape, self.dtype, self._real = row_shape, dtype, real

    def rows(self) -> Rows:
        if (self.source == _UNSET).any():
            raise RuntimeError("feature cache: some rows were neither found nor computed.")
        return Rows(self.sources, self.source, self.offset, self.row_shape or (0,), self.dtype or torch.float32)


def targets(labels: Sequence, num_classes: int | None = None) -> torch.Tensor:
    """Training targets of samples' labels: int64 (N,) class indices, or with num_classes (multi-label data, labels
    are tuples of class indices) float32 (N, num_classes) multi-hot rows."""
    if num_classes is None:
        return torch.as_tensor(list(labels), dtype=torch.long)
    out = torch.zeros(len(labels), num_classes, dtype=torch.float32)
    for row, label in enumerate(labels):
        out[row, list(label)] = 1.0
    return out


class CachedFeatures(Dataset):
    """Training set over cached features: views (K, N, D) -> one view per image per draw (K=1: no randomness).

    The views are FeatureViews (rows on disk, read a batch at a time: a DataLoader's batch is one read through
    __getitems__), or a tensor for rows already in memory. Rows stay aligned with the image samples they came from
    (the same indices, so a sampler, balance weights and an lp_ft switch to images see the same dataset); a missing
    row marks a file that failed to decode during extraction and is served as a BadSample, which the collate drops,
    as the image path drops the file.

    Epoch-indexed (tlkit.seeding): given (index, epoch), the view is drawn from (seed, epoch, index)."""

    epoch_indexed = True
    row_ndim = 1  # one image's entry: a feature vector

    def __init__(self, views: FeatureViews | Sequence[Rows] | torch.Tensor, labels: Sequence[int] | torch.Tensor, *,
                 seed: int = 0, paths: Sequence[str] | None = None):
        self.views = FeatureViews.of(views, self.row_ndim)
        # class indices (N,), or a (N, C) float multi-hot tensor for multi-label data (see `targets`)
        self.labels = labels if isinstance(labels, torch.Tensor) else targets(labels)
        self.seed = seed
        self.paths = list(paths) if paths is not None else None
        self.finite = self.views.finite  # per image: every view extracted
        self._finite = self.finite.numpy()

    def __len__(self) -> int:
        return self.views.shape[1]

    def usable(self) -> tuple[FeatureViews, torch.Tensor]:
        """(views, labels) of the rows that were extracted (the closed-form probe fits on these, in batches)."""
        keep = torch.nonzero(self.finite).flatten()
        views = self.views if len(keep) == len(self.finite) else self.views.subset(keep)
        return views, self.labels[self.finite]

    def _view(self, index: int, epoch: int | None) -> int:
        if len(self.views) == 1:
            return 0
        if epoch is not None:
            return derive_seed(self.seed, "view", epoch, index) % len(self.views)
        return int(torch.randint(len(self.views), ()))

    def _bad(self, index: int) -> BadSample:
        path = self.paths[index] if self.paths is not None else f"row {index}"
        return BadSample(path, "failed to decode during feature extraction")

    def _item(self, row: torch.Tensor, index: int) -> tuple:
        return row, self.labels[index]

    def __getitem__(self, index: int | tuple[int, int]) -> tuple | BadSample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int | tuple[int, int]]) -> list:
        """A batch of items, read with one batched read per view (the DataLoader calls this for a whole batch)."""
        items: list = [None] * len(indices)
        wanted: dict[int, list[tuple[int, int]]] = {}
        for slot, given in enumerate(indices):
            index, epoch = split_epoch_index(given)
            index = int(index)
            if not self._finite[index]:
                items[slot] = self._bad(index)
            else:
                wanted.setdefault(self._view(index, epoch), []).append((slot, index))
        for view, pairs in wanted.items():
            rows = self.views[view].read([i for _, i in pairs])
            for (slot, index), row in zip(pairs, rows):
                items[slot] = self._item(row, index)
        return items


class CachedActivations(CachedFeatures):
    """CachedFeatures over a frozen prefix's activations (K, N, C, H, W): an item's input is {"activations": ...},
    so the module runs its trained top on it (an image tensor of the same rank would otherwise look alike)."""

    row_ndim = 3

    def _item(self, row: torch.Tensor, index: int) -> tuple:
        return {"activations": row}, self.labels[index]
