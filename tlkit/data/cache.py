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
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tlkit.data.images import BadSample, decode
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
def extract(backbone: torch.nn.Module, paths: Sequence[str], transform: Callable, *, seeds: Sequence[int] | None,
            batch_size: int, num_workers: int, desc: str, channels_last: bool = True,
            device: torch.device = torch.device("cpu"), on_bad: str = "error", progress: bool = True,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Outputs (len(paths), ...) of `backbone` (pooled features, or a frozen prefix's activations) for `paths`
    through `transform`, one batched forward per batch, stored as `dtype`. on_bad="skip": a file that fails to
    decode gets a NaN row (the caller drops it); "error" raises DataError."""
    home = next(backbone.parameters()).device
    backbone.eval().to(device)
    loader = DataLoader(_ViewDataset(paths, transform, seeds, on_bad), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate_views)
    batches: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    row_shape: tuple[int, ...] = (getattr(backbone, "num_features", 0),)
    for images, good in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        out = None
        if images is not None:
            images = images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            computed = backbone(images)
            if not computed.isfinite().all():  # NaN rows mark undecodable files only: never blame decoded ones
                raise DataError(f"{desc}: the backbone gave NaN/inf features for images that decoded; its weights "
                                "or the input preprocessing are broken, not the images: check backbone.weights.")
            out = computed.to(device="cpu", dtype=dtype, memory_format=torch.contiguous_format)
            if not out.isfinite().all():
                raise DataError(f"{desc}: outputs exceed the range of {dtype} (max |value| "
                                f"{float(computed.abs().max()):g}); cut the backbone elsewhere or use kind finetune.")
            row_shape = tuple(out.shape[1:])
        batches.append((good, out))
    backbone.to(home)
    rows = torch.full((len(paths), *row_shape), float("nan"), dtype=dtype)
    start = 0
    for good, out in batches:
        if out is not None:
            rows[start: start + len(good)][good] = out
        start += len(good)
    return rows


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


def row_checksums(features: torch.Tensor) -> list[int]:
    """CRC-32 of each row's bytes (any dtype): what a read checks before trusting a row."""
    flat = features.detach().cpu().contiguous().reshape(len(features), -1).view(torch.uint8).numpy()
    return [zlib.crc32(row) for row in flat]


class FeatureCache:
    """Rows of features per cache key, stored as safetensors + JSON lists of file identities and row CRC-32s.
    directory=None: off. A write that fails (full disk, read-only folder) warns once and turns saving off."""

    def __init__(self, directory: str | Path | None):
        self.directory = Path(directory) if directory is not None else None
        self.stats = CacheStats()
        self.saving = directory is not None

    def _entry(self, key: dict) -> Path | None:
        if self.directory is None:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.directory / digest

    def _read(self, entry: Path | None) -> dict[str, torch.Tensor]:
        """The entry's rows whose bytes match their checksum; damaged rows are left out (recomputed)."""
        path = entry / "features.safetensors" if entry is not None else None
        if path is None or not path.is_file():
            return {}
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                identities = json.loads(meta["identities"])
                checksums = json.loads(meta.get("crc32", "null"))
                features = f.get_tensor("features")
        except Exception as exc:  # noqa: BLE001 - a damaged entry of any kind is recomputed, never trusted
            log.warning("feature cache entry %s is unreadable (%s); recomputing it", entry, str(exc)[:120])
            return {}
        if not isinstance(checksums, list) or not len(identities) == len(checksums) == len(features):
            log.warning("feature cache entry %s has no valid row checksums (damaged, or written by an older tlkit); "
                        "recomputing it", entry)
            return {}
        good = [crc == stored for crc, stored in zip(row_checksums(features), checksums)]
        if not all(good):
            log.warning("feature cache entry %s: %d of %d rows fail their checksum (damaged on disk); recomputing "
                        "them", entry, good.count(False), len(good))
        return {ident: row for ident, row, ok in zip(identities, features, good) if ok}

    def _write(self, entry: Path, key: dict, rows: dict[str, torch.Tensor]) -> None:
        """One file holds the features, their row identities and checksums, so one atomic rename commits all."""
        identities = list(rows)
        features = torch.stack([rows[i] for i in identities]).contiguous()
        try:
            atomic_save(entry / "features.safetensors", lambda name: save_file(
                {"features": features}, name,
                metadata={"identities": json.dumps(identities), "crc32": json.dumps(row_checksums(features)),
                          "key": json.dumps(key, sort_keys=True)}))
        except OSError as exc:
            self.saving = False
            log.warning("cannot save features in the cache %s (%s); going on without saving them. Free space "
                        "there, point cache.dir elsewhere, or set cache.disk: false.", self.directory,
                        exc.strerror or exc)

    def features(self, key: dict, paths: Sequence[str], compute: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Features for `paths` in order: cached rows whose file identity still matches and whose bytes pass their
        checksum, `compute` for the rest. Rows of files that failed to decode (NaN) are returned, never stored."""
        entry = self._entry(key)
        rows = self._read(entry)
        identities = [file_identity(p) for p in paths]
        missing = [p for p, ident in zip(paths, identities) if ident not in rows]
        self.stats.hits += len(paths) - len(missing)
        self.stats.misses += len(missing)
        undecodable: dict[str, torch.Tensor] = {}
        if missing:
            for ident, row in zip((file_identity(p) for p in missing), compute(missing)):
                (rows if row.isfinite().all() else undecodable)[ident] = row
            if entry is not None and self.saving:
                self._write(entry, key, rows)
        return torch.stack([rows[i] if i in rows else undecodable[i] for i in identities])


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

    Rows stay aligned with the image samples they came from (the same indices, so a sampler, balance weights and an
    lp_ft switch to images see the same dataset); a non-finite row marks a file that failed to decode during
    extraction and is served as a BadSample, which the collate drops, as the image path drops the file.

    Epoch-indexed (tlkit.seeding): given (index, epoch), the view is drawn from (seed, epoch, index)."""

    epoch_indexed = True
    row_ndim = 1  # one image's entry: a feature vector

    def __init__(self, views: torch.Tensor, labels: Sequence[int] | torch.Tensor, *, seed: int = 0,
                 paths: Sequence[str] | None = None):
        if views.ndim == self.row_ndim + 1:  # a single view
            views = views[None]
        self.views = views
        # class indices (N,), or a (N, C) float multi-hot tensor for multi-label data (see `targets`)
        self.labels = labels if isinstance(labels, torch.Tensor) else targets(labels)
        self.seed = seed
        self.paths = list(paths) if paths is not None else None
        self.finite = views.flatten(2).isfinite().all(dim=2).all(dim=0)  # per image: every view extracted

    def __len__(self) -> int:
        return self.views.shape[1]

    def usable(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(views, labels) of the rows that were extracted (the closed-form probe fits on these)."""
        return self.views[:, self.finite], self.labels[self.finite]

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | BadSample:
        index, epoch = split_epoch_index(index)
        if not self.finite[index]:
            path = self.paths[index] if self.paths is not None else f"row {index}"
            return BadSample(path, "failed to decode during feature extraction")
        if len(self.views) == 1:
            view = 0
        elif epoch is not None:
            view = derive_seed(self.seed, "view", epoch, index) % len(self.views)
        else:
            view = int(torch.randint(len(self.views), ()))
        return self.views[view, index], self.labels[index]


class CachedActivations(CachedFeatures):
    """CachedFeatures over a frozen prefix's activations (K, N, C, H, W): an item's input is {"activations": ...},
    so the module runs its trained top on it (an image tensor of the same rank would otherwise look alike)."""

    row_ndim = 3

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[dict[str, torch.Tensor], torch.Tensor] | BadSample:
        item = super().__getitem__(index)
        if isinstance(item, BadSample):
            return item
        activations, label = item
        return {"activations": activations}, label
