"""Image-folder data: scan, split, decode, and the Lightning DataModule.

Layouts: root/{train,val|valid|validation|test}/<class>/* or root/<class>/* (then a seeded, stratified val split).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, default_collate
from typing_extensions import override

from tlkit.data.augment import TrainAugment, build_eval_transform, build_train_transform
from tlkit.data.images import is_image_name, load_rgb
from tlkit.data.preprocessing import Preprocessing
from tlkit.errors import DataError, DataNotFoundError, did_you_mean
from tlkit.seeding import (
    EpochSampler,
    derive_seed,
    split_epoch_index,
    takes_epoch_indices,
)

log = logging.getLogger(__name__)

VAL_SPLIT_NAMES = ("val", "valid", "validation", "test")


@dataclass
class FolderScan:
    """What a data root holds: class names and (path, label) samples per split, plus files that were skipped."""

    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    layout: str  # "split" (train/ + val/) or "single" (one folder, split by val_fraction)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (width, height), from the header


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def leaves_root(path: Path, root: Path) -> bool:
    """True when `path` is a symlink whose target lies outside `root` (such links are never followed: they could
    point anywhere, and a folder copied elsewhere would silently change)."""
    if not path.is_symlink():
        return False
    return not Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))


def _list_images(class_dir: Path, skipped: list[tuple[str, str]], root: Path,
                 sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Image files below class_dir (recursive, sorted), their header sizes recorded in `sizes`. Non-images,
    unreadable headers, decompression bombs and symlinks leaving `root` are skipped and listed."""
    files = []
    for path in sorted(class_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
            continue
        if leaves_root(path, root):
            skipped.append((str(path), "symlink leaving the data folder (not followed)"))
            continue
        if not path.is_file():
            continue
        if not is_image_name(path):
            skipped.append((str(path), "not an image file extension"))
            continue
        try:
            with Image.open(path) as im:  # reads the header only: cheap, catches empty and non-image files
                width, height = im.size
        except Image.DecompressionBombError:
            skipped.append((str(path), "decompression bomb: refused from its header"))
            continue
        except (UnidentifiedImageError, OSError) as exc:
            skipped.append((str(path), f"unreadable: {type(exc).__name__}"))
            continue
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:  # PIL only warns below 2x the limit
            skipped.append((str(path), f"decompression bomb: {width}x{height} pixels, refused from its header"))
            continue
        files.append(str(path))
        sizes[str(path)] = (width, height)
    return files


def _collect(folder: Path, classes: list[str], skipped: list[tuple[str, str]], root: Path,
             sizes: dict[str, tuple[int, int]]) -> list[tuple[str, int]]:
    samples = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if leaves_root(class_dir, root):
            skipped.append((str(class_dir), "symlink leaving the data folder (not followed)"))
        elif class_dir.is_dir():
            samples += [(p, label) for p in _list_images(class_dir, skipped, root, sizes)]
    return samples


def scan_folder(root: str | Path, *, val_fraction: float = 0.2, seed: int = 42) -> FolderScan:
    """Find classes and samples under root; raises DataNotFoundError / DataError with the fix in one line."""
    root = Path(root)
    if not root.is_dir():
        parent = root.parent
        hint = did_you_mean(root.name, [p.name for p in parent.iterdir()]) if parent.is_dir() else ""
        raise DataNotFoundError(
            f"Data folder {str(root)!r} does not exist.{hint} Point data.root at a folder of class subfolders "
            "(e.g. --set data.root=/path/to/images)."
        )
    skipped: list[tuple[str, str]] = []
    sizes: dict[str, tuple[int, int]] = {}
    train_dir = root / "train"
    val_dir = next((root / n for n in VAL_SPLIT_NAMES if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        classes = [p.name for p in _class_dirs(train_dir)]
        _check_classes(classes, train_dir)
        extra = sorted({p.name for p in _class_dirs(val_dir)} - set(classes))
        if extra:
            raise DataError(
                f"{val_dir} has classes missing from {train_dir}: {', '.join(extra)}. "
                "Add training images for them or remove them from the validation folder."
            )
        train = _collect(train_dir, classes, skipped, root, sizes)
        val = _collect(val_dir, classes, skipped, root, sizes)
        layout = "split"
    else:
        if val_dir is not None and not train_dir.is_dir():
            raise DataError(
                f"{root} has {val_dir.name}/ but no train/ folder; add train/<class>/ images beside it, "
                "or point data.root at a folder of class subfolders."
            )
        if train_dir.is_dir():
            raise DataError(
                f"{root} has train/ but no validation folder ({'/, '.join(VAL_SPLIT_NAMES)}/). "
                "Add one, or point data.root at train/ to split it by data.val_fraction."
            )
        classes = [p.name for p in _class_dirs(root)]
        _check_classes(classes, root)
        samples = _collect(root, classes, skipped, root, sizes)
        train, val = stratified_split(samples, val_fraction=val_fraction, seed=seed)
        layout = "single"
    empty = [c for i, c in enumerate(classes) if not any(label == i for _, label in train)]
    if empty:
        raise DataError(f"No training images for class(es) {', '.join(empty)} under {root}; add images or remove the folders.")
    if not val:
        raise DataError(f"No validation images found under {root}; add images to the validation folder.")
    for path, reason in skipped:
        log.warning("skipped %s (%s)", path, reason)
    return FolderScan(classes=classes, train=train, val=val, layout=layout, skipped=skipped, sizes=sizes)


def _check_classes(classes: list[str], folder: Path) -> None:
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(
            f"{folder} needs at least 2 class subfolders (found {found}); put each class's images in its own folder."
        )


def stratified_split(
    samples: Sequence[tuple[str, int]], *, val_fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Seeded per-class split: round(n * val_fraction) of each class to val, clamped so that every class keeps at
    least one image on each side."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in sorted(samples):
        by_class.setdefault(sample[1], []).append(sample)
    small = sorted(label for label, items in by_class.items() if len(items) < 2)
    if small:
        raise DataError(
            f"Cannot split a class with fewer than 2 images into train and val (class indices {small}); "
            "add images or provide train/ and val/ folders."
        )
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
        val += items[:n_val]
        train += items[n_val:]
    return sorted(train), sorted(val)


def decode(path: str) -> np.ndarray:
    """load_rgb with a one-line DataError naming the file; never substitutes another sample (that would silently
    change the data the user thinks they trained on)."""
    try:
        return load_rgb(path)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise DataError(f"Cannot decode {path} ({type(exc).__name__}: {exc}); remove or repair the file.") from exc


BAD_IMAGE_POLICIES = ("skip", "error")


@dataclass(frozen=True)
class BadSample:
    """What ImageDataset returns under on_bad="skip" for a file that no longer decodes; collate_skipping_bad drops it."""

    path: str
    reason: str


class ImageDataset(Dataset):
    """(path, label) samples decoded to RGB and passed through `transform`.

    on_bad="error" raises DataError naming a file that fails to decode; "skip" returns a BadSample instead (the
    collate drops it, never substituting another image) and appends "path<TAB>reason" to `bad_log` when set (a file,
    so DataLoader worker processes can record it too).

    Epoch-indexed (tlkit.seeding): given an (index, epoch) pair, the transform is reseeded from (seed, epoch, index),
    so a sample's augmentation does not depend on which worker process draws it or what that worker did before.
    """

    epoch_indexed = True

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, *, on_bad: str = "error",
                 bad_log: Path | None = None, seed: int = 0):
        if on_bad not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad must be one of {', '.join(BAD_IMAGE_POLICIES)}; got {on_bad!r}.")
        self.samples = list(samples)
        self.transform = transform
        self.on_bad = on_bad
        self.bad_log = bad_log
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int] | BadSample:
        index, epoch = split_epoch_index(index)
        path, label = self.samples[index]
        try:
            image = decode(path)
        except DataError as exc:
            if self.on_bad == "error":
                raise
            log.warning("skipped %s: %s", path, exc)
            if self.bad_log is not None:
                with open(self.bad_log, "a") as f:
                    f.write(f"{path}\t{str(exc).splitlines()[0]}\n")
            return BadSample(path, str(exc))
        reseed = getattr(self.transform, "reseed", None)
        if epoch is not None and reseed is not None:
            reseed(derive_seed(self.seed, "sample", epoch, index))
        return self.transform(image), label


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """default_collate over the good samples (an empty batch when all were bad; the module skips it)."""
    good = [item for item in batch if not isinstance(item, BadSample)]
    if good:
        return default_collate(good)
    return torch.empty(0), torch.empty(0, dtype=torch.long)


def resolve_num_workers(num_workers: int | str) -> int:
    if num_workers == "auto":
        return min(4, os.cpu_count() or 1)
    return int(num_workers)


class ImageFolderDataModule(L.LightningDataModule):
    """Image folder -> train/val DataLoaders with the backbone's preprocessing.

    Class names are available right after construction (`dm.classes`), so a model can be built from them.
    When `preprocessing` is None it is taken from the LightningModule being fitted (its `preprocessing` attribute).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        preprocessing: Preprocessing | None = None,
        augment: TrainAugment | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        val_fraction: float = 0.2,
        seed: int = 42,
        on_bad_image: str = "error",
    ):
        super().__init__()
        self.on_bad_image = on_bad_image
        self.bad_log: Path | None = None  # set by the runner: where files that fail to decode mid-run are listed
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        self.root = Path(root)
        self.preprocessing = preprocessing
        self.augment = augment if augment is not None else TrainAugment()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.scan = scan_folder(self.root, val_fraction=val_fraction, seed=seed)
        self.val_fraction = val_fraction
        self.seed = seed
        self.sample_weights: list[float] | None = None  # data.balance: sampler (set by run.fit)
        self.first_epoch = 0  # the epoch a resumed run starts at (set by run.fit; see make_loader)
        self.train_set: ImageDataset | None = None
        self.val_set: ImageDataset | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.scan.classes)

    def split_info(self) -> dict:
        """How the images were split: evaluate re-creates a one-folder layout's val split from it."""
        return {"layout": self.scan.layout, "val_fraction": self.val_fraction, "seed": self.seed}

    @override
    def state_dict(self) -> dict:
        return {"split": self.split_info()}  # Lightning stores it in every checkpoint of a fit with this datamodule

    @property
    def num_classes(self) -> int:
        return len(self.scan.classes)

    def setup(self, stage: str | None = None) -> None:
        pre = self.preprocessing
        if pre is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
            pre = getattr(module, "preprocessing", None)
            if pre is None:
                raise ValueError(
                    "ImageFolderDataModule needs preprocessing: pass preprocessing=model.preprocessing, "
                    "or fit a model that has a `preprocessing` attribute (TransferModule does)."
                )
            self.preprocessing = pre
        bad = {"on_bad": self.on_bad_image, "bad_log": self.bad_log, "seed": self.seed}
        self.train_set = ImageDataset(self.scan.train, build_train_transform(pre, self.augment), **bad)
        self.val_set = ImageDataset(self.scan.val, build_eval_transform(pre), **bad)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                           sample_weights=self.sample_weights, seed=self.seed, epoch=self.first_epoch)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers)


def balanced_sample_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Per-sample draw weights 1 / count(class): every class is equally likely in a weighted draw."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return [1.0 / counts[label] for label in labels]


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """n / (C x count_c) per class, scikit-learn's "balanced"; a class without images gets 0. Plain floats, so
    checkpoints that store them stay weights_only-loadable."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return [float(len(labels) / (num_classes * c)) if c else 0.0 for c in counts]


def make_loader(
    dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int,
    sample_weights: Sequence[float] | None = None, seed: int = 0, epoch: int = 0,
) -> DataLoader:
    """The one DataLoader policy for images and cached features, so both paths see the same batches.

    shuffle: an EpochSampler, whose order depends only on (seed, epoch), so a resumed run sees the same batches.
    `epoch` is where it starts: Lightning creates a loader's first iterator (and workers prefetch from it) before
    its first set_epoch call, and on resume does not create another, so a resumed run's loader must know its epoch.
    sample_weights: draw with replacement instead of shuffling (data.balance: sampler).
    """
    sampler = None
    if shuffle:
        sampler = EpochSampler(len(dataset), seed=seed, weights=sample_weights, with_epoch=takes_epoch_indices(dataset))
        sampler.set_epoch(epoch)
    elif sample_weights is not None:
        raise ValueError("sample_weights draw a training order; they need shuffle=True.")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # A trailing batch of 1 breaks BatchNorm in train mode; reshuffling each epoch keeps every image in play.
        drop_last=shuffle and len(dataset) > batch_size,
        collate_fn=collate_skipping_bad,
    )


class FeatureDataModule(L.LightningDataModule):
    """Train/val loaders over in-memory tensors (cached backbone features) with the image path's batching."""

    def __init__(self, train: Dataset, val: Dataset, *, batch_size: int, eval_batch_size: int, seed: int = 0,
                 split: dict | None = None):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.split = split  # the image split the features came from (saved in checkpoints)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.sample_weights: list[float] | None = None  # data.balance: sampler (set by run.fit)
        self.seed = seed
        self.first_epoch = 0  # the epoch a resumed run starts at (set by run.fit; see make_loader)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=0,
                           sample_weights=self.sample_weights, seed=self.seed, epoch=self.first_epoch)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, batch_size=self.eval_batch_size, shuffle=False, num_workers=0)

    @override
    def state_dict(self) -> dict:
        return {"split": self.split} if self.split else {}


class PhasedDataModule(L.LightningDataModule):
    """Cached features before `switch_epoch`, images from then on (lp_ft: the probe phase reuses the feature cache).

    Both give the same number of batches per epoch (same batching), so the LR schedule is unchanged. The Trainer must
    reload dataloaders every epoch (`reload_every_n_epochs`).
    """

    reload_every_n_epochs = 1

    def __init__(self, features: L.LightningDataModule, images: L.LightningDataModule, switch_epoch: int):
        super().__init__()
        self.features, self.images, self.switch_epoch = features, images, switch_epoch

    def setup(self, stage: str) -> None:
        self.images.setup(stage)

    def _current(self) -> L.LightningDataModule:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self.features if epoch < self.switch_epoch else self.images

    def train_dataloader(self) -> DataLoader:
        return self._current().train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self._current().val_dataloader()

    @override
    def state_dict(self) -> dict:
        return self.images.state_dict()
