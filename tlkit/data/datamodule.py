"""Image-folder data for Lightning: decode, loaders, and ImageFolderDataModule (train / val / test / predict, with
cached backbone features while the fitted module's backbone is frozen).

Scanning and splitting live in tlkit.data.scan (re-exported here); cached features in tlkit.data.features.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from typing_extensions import override

from tlkit.config import settings_from
from tlkit.data.augment import TrainAugment, build_eval_transform, build_train_transform
from tlkit.data.cache import CachedFeatures, extraction_device
from tlkit.data.features import Extraction, FeatureSplits, PhasedDataset, extract_splits
from tlkit.data.images import BadSample, decode
from tlkit.data.preprocessing import Preprocessing
from tlkit.data.protocol import CachePlan, ServedModel, served_model
from tlkit.data.scan import (  # noqa: F401  (re-exported: the names' historical home)
    VAL_SPLIT_NAMES,
    FolderScan,
    leaves_root,
    scan_folder,
    stratified_split,
)
from tlkit.data.settings import DEFAULT_SEED, CacheConfig, DataConfig
from tlkit.data.table import TABLE_LAYOUT, scan_data
from tlkit.data.workers import local_devices, resolve_workers
from tlkit.errors import DataError
from tlkit.seeding import (
    EpochSampler,
    derive_seed,
    split_epoch_index,
    takes_epoch_indices,
)

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")


class ImageDataset(Dataset):
    """(path, label) samples decoded to RGB and passed through `transform`; returns (image, label), or with
    with_paths=True (image, path) (prediction: the caller needs to know which file each row is).

    Multi-label samples, (path, tuple of class indices), need num_classes: the label is then a float32 multi-hot
    tensor of shape (num_classes,), so a batch's targets are (B, C) float32.

    on_bad="error" raises DataError naming a file that fails to decode; "skip" returns a BadSample instead (the
    collate drops it, never substituting another image) and appends "path<TAB>reason" to `bad_log` when set (a file,
    so DataLoader worker processes can record it too).

    Epoch-indexed (tlkit.seeding): given an (index, epoch) pair, the transform is reseeded from (seed, epoch, index),
    so a sample's augmentation does not depend on which worker process draws it or what that worker did before.
    """

    epoch_indexed = True

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable, *, on_bad: str = "error",
                 bad_log: Path | None = None, seed: int = 0, with_paths: bool = False, num_classes: int | None = None):
        if on_bad not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad must be one of {', '.join(BAD_IMAGE_POLICIES)}; got {on_bad!r}.")
        self.samples = list(samples)
        if num_classes is None and any(isinstance(y, tuple) for _, y in self.samples):
            raise ValueError("multi-label samples (path, (class indices...)) need num_classes for their targets.")
        self.num_classes = num_classes
        self.transform = transform
        self.on_bad = on_bad
        self.bad_log = bad_log
        self.seed = seed
        self.with_paths = with_paths

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int | str] | BadSample:
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
            return BadSample(path, str(exc).splitlines()[0])
        reseed = getattr(self.transform, "reseed", None)
        if epoch is not None and reseed is not None:
            reseed(derive_seed(self.seed, "sample", epoch, index))
        return self.transform(image), (path if self.with_paths else self._target(label))

    def _target(self, label: int | tuple[int, ...]) -> int | torch.Tensor:
        if self.num_classes is None:
            return label
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[list(label)] = 1.0
        return target


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """default_collate over the good samples (an empty batch when all were bad; the module skips it)."""
    good = [item for item in batch if not isinstance(item, BadSample)]
    if good:
        return default_collate(good)
    return torch.empty(0), torch.empty(0, dtype=torch.long)


class PathBatch(NamedTuple):
    """A prediction batch as the loader yields it; the datamodule's on_before_batch_transfer records `bad` and hands
    the module (images, paths), which TransferModule.predict_step turns into {"probs", "paths"}."""

    images: torch.Tensor
    paths: list[str]
    bad: list[tuple[str, str]]


def collate_paths(batch: list) -> PathBatch:
    good = [item for item in batch if not isinstance(item, BadSample)]
    bad = [(item.path, item.reason) for item in batch if isinstance(item, BadSample)]
    if not good:
        return PathBatch(torch.empty(0), [], bad)
    return PathBatch(torch.stack([image for image, _ in good]), [path for _, path in good], bad)


class PathBatches(L.LightningDataModule):
    """Base of datamodules whose predict loader yields PathBatch: files that fail to decode are listed in
    `self.skipped` (in the main process, whichever worker decoded them) and an all-bad batch becomes an empty one
    of the right shape, so predict_step never sees a malformed tensor."""

    skipped: list[tuple[str, str]]
    input_size: int | None = None

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, PathBatch):
            return batch
        self.skipped.extend(batch.bad)
        images = batch.images
        if images.ndim != 4:
            size = self.input_size or 1
            images = torch.empty(0, 3, size, size)
        return images, batch.paths


def resolve_num_workers(num_workers: int | str) -> int:
    return resolve_workers(num_workers, local_devices())  # auto: this process's share of the machine's CPUs


def balanced_sample_weights(labels: Sequence[int] | Sequence[tuple[int, ...]], num_classes: int) -> list[float]:
    """Per-sample draw weights 1 / count(class): every class is equally likely in a weighted draw. Multi-label
    labels (tuples): 1 / count of the image's rarest class, so images carrying a rare class are drawn as often as
    that class needs; images with no class count as one more group."""
    if labels and isinstance(labels[0], tuple):
        counts = Counter(c for label in labels for c in label)
        empty = sum(1 for label in labels if not label)
        return [1.0 / min(counts[c] for c in label) if label else 1.0 / empty for label in labels]
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return [1.0 / counts[label] for label in labels]


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """n / (C x count_c) per class, scikit-learn's "balanced"; a class without images gets 0. Plain floats, so
    checkpoints that store them stay weights_only-loadable."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return [float(len(labels) / (num_classes * c)) if c else 0.0 for c in counts]


def positive_class_weights(labels: Sequence[tuple[int, ...]], num_classes: int) -> list[float]:
    """Multi-label loss weights: negatives / positives per class, BCE's pos_weight (a class on 10% of the images
    weighs its positives 9x, so missing it costs as much as false alarms); 1.0 for a class without positives."""
    positives = Counter(c for label in labels for c in label)
    return [float((len(labels) - positives[c]) / positives[c]) if positives[c] else 1.0 for c in range(num_classes)]


class OrderedEpochSampler(Sampler):
    """0..n-1 in order as (index, epoch) pairs: evaluation order, but a PhasedDataset still knows the epoch
    (Lightning calls set_epoch on validation samplers while fitting)."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return ((index, self.epoch) for index in range(self.n))


def make_loader(
    dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int,
    sample_weights: Sequence[float] | None = None, seed: int = 0, epoch: int = 0, collate_fn: Callable | None = None,
) -> DataLoader:
    """The one DataLoader policy for images and cached features, so both paths see the same batches.

    shuffle: an EpochSampler, whose order depends only on (seed, epoch), so a resumed run sees the same batches.
    `epoch` is where it starts: Lightning creates a loader's first iterator (and workers prefetch from it) before
    its first set_epoch call, and on resume does not create another, so a resumed run's loader must know its epoch.
    sample_weights: draw with replacement instead of shuffling (data.balance: sampler).
    """
    sampler: Sampler | None = None
    if shuffle:
        sampler = EpochSampler(len(dataset), seed=seed, weights=sample_weights, with_epoch=takes_epoch_indices(dataset))
        sampler.set_epoch(epoch)
    elif sample_weights is not None:
        raise ValueError("sample_weights draw a training order; they need shuffle=True.")
    elif isinstance(dataset, PhasedDataset):
        sampler = OrderedEpochSampler(len(dataset))
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        # A trailing batch of 1 breaks BatchNorm in train mode; reshuffling each epoch keeps every image in play.
        drop_last=shuffle and len(dataset) > batch_size,
        collate_fn=collate_fn or collate_skipping_bad,
    )


def _unlimited(epochs: int | None) -> int:
    """Trainer max_epochs, with None / -1 (train until stopped) as 'more epochs than any plan has'."""
    return sys.maxsize if epochs is None or epochs < 0 else int(epochs)


def _batch_limits(trainer: L.Trainer, stage: str) -> tuple[int | None, int | None]:
    """(train, val) batches of a run that uses only a few (fast_dev_run sets both to its count; an int
    limit_train_batches / limit_val_batches); None = all. Fractions keep every image: Lightning applies them to the
    loader's length, so a loader shortened here would be cut again."""
    if stage not in ("fit", "validate"):
        return None, None

    def count(limit: float) -> int | None:  # 0 (no batches: lr-find validates nothing) keeps the split whole too
        return int(limit) if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    return count(trainer.limit_train_batches), count(trainer.limit_val_batches)


def _limited(scan: FolderScan, limits: tuple[int | None, int | None], *, batch_sizes: tuple[int, int], seed: int
             ) -> FolderScan:
    """`scan` with only the images that `limits` batches read: a seeded draw of train (all classes in play), the
    first val images (the order validation reads them in)."""
    train_batches, val_batches = limits
    train, val = scan.train, scan.val
    if train_batches is not None and train_batches * batch_sizes[0] < len(train):
        keep = np.random.default_rng(seed).permutation(len(train))[: train_batches * batch_sizes[0]]
        train = [train[i] for i in sorted(keep)]
    if val_batches is not None:
        val = val[: val_batches * batch_sizes[1]]
    if train is scan.train and val is scan.val:
        return scan
    log.info("using %d train and %d val images of %d and %d: the run reads only %s train and %s val batches",
             len(train), len(val), len(scan.train), len(scan.val), train_batches or "all", val_batches or "all")
    return dataclasses.replace(scan, train=train, val=val)


def _describe(pre: Preprocessing) -> str:
    return f"{pre.input_size} px, crop_pct {pre.crop_pct}, {pre.interpolation}, mean {pre.mean}, std {pre.std}"


_DATA_DEFAULTS = DataConfig.model_fields


class ImageFolderDataModule(PathBatches):
    """Image folder -> train / val / test / predict DataLoaders with the backbone's preprocessing.

    Splits (tlkit.data.scan): train/ + val/ (+ test/); train/ (+ test/) with val carved from train; or one folder
    of classes with val_fraction / test_fraction carved from it. val chooses checkpoints; test only ever feeds
    `trainer.test`. Class names are available right after construction (`dm.classes`), so a model can be built.

    Labels may instead come from a table (tlkit.data.table): source="csv" reads root/<csv>, and `table=` (or
    `ImageFolderDataModule.from_dataframe`) takes a pandas DataFrame, with the same columns and checks. Multi-label
    tables (`dm.multi_label`) give (B, C) float32 multi-hot targets.

    Feature cache: when the fitted module's strategy says leading epochs train only the head on a frozen backbone
    (`module.strategy.cached_epochs(trainer.max_epochs)`: a linear probe all of them, lp_ft its probe epochs), those
    epochs are served from the backbone's features, extracted once (cache.views augmented views per training image)
    and kept on disk (cache.disk); the other epochs, and Mixup/CutMix runs (they mix images), read images.
    `dm.cache_info` says what happened.

    Args mirror DataConfig (validated by it, same defaults); `root` may also be a DataConfig or its dict (the
    recipe's data section), which then gives those arguments. Besides:
        preprocessing: eval geometry and normalisation; None = the fitted module's `preprocessing`.
        augment: training augmentation (TrainAugment, its dict or a preset name); default the recipe's.
        cache: CacheConfig, its dict, or False for images every epoch; default the recipe's (on, 1 view, on disk).
        seed: split, shuffling, augmentation and cached-view draws.
        first_epoch: the epoch a resumed fit starts at (its loader must start there; see make_loader).
        bad_log: a file listing images that fail to decode mid-run (on_bad_image: skip).
        scan: a FolderScan of `root` made with the same fractions and seed (skips re-reading every header).
        table: a pandas DataFrame of labels (path,label[,split]; paths relative to root) instead of source/csv.
    """

    def __init__(
        self,
        root: str | Path | DataConfig | Mapping,
        *,
        preprocessing: Preprocessing | None = None,
        augment: TrainAugment | Mapping | str | None = None,
        cache: CacheConfig | Mapping | bool | None = None,
        batch_size: int = _DATA_DEFAULTS["batch_size"].default,
        eval_batch_size: int | None = _DATA_DEFAULTS["eval_batch_size"].default,
        num_workers: int | str = _DATA_DEFAULTS["num_workers"].default,
        val_fraction: float = _DATA_DEFAULTS["val_fraction"].default,
        test_fraction: float = _DATA_DEFAULTS["test_fraction"].default,
        seed: int = DEFAULT_SEED,
        on_bad_image: str = _DATA_DEFAULTS["on_bad_image"].default,
        balance: str = _DATA_DEFAULTS["balance"].default,
        first_epoch: int = 0,
        bad_log: str | Path | None = None,
        scan: FolderScan | None = None,
        source: str = _DATA_DEFAULTS["source"].default,
        csv: str = _DATA_DEFAULTS["csv"].default,
        multi_label: bool | None = _DATA_DEFAULTS["multi_label"].default,
        label_delimiter: str = _DATA_DEFAULTS["label_delimiter"].default,
        table: Any = None,
        columns: Mapping[str, str] | None = None,
        exclude: str | list[str] | None = None,
        relabel: str | None = None,
    ):
        super().__init__()
        data = {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "num_workers": num_workers,
                "val_fraction": val_fraction, "test_fraction": test_fraction, "on_bad_image": on_bad_image,
                "balance": balance, "source": source, "csv": csv, "multi_label": multi_label,
                "label_delimiter": label_delimiter, "columns": dict(columns) if columns else None,
                "exclude": exclude, "relabel": relabel}
        if isinstance(root, (DataConfig, Mapping)):  # the recipe's data section, as TransferModule takes its sections
            section = settings_from(DataConfig, root)
            both = [k for k, v in data.items() if v != _DATA_DEFAULTS[k].get_default(call_default_factory=True)]
            if both:
                raise DataError(f"{', '.join(both)} given both in the data settings and as argument(s); give them "
                                "in one place.")
            data, root = {k: getattr(section, k) for k in data}, section.root
        self.config = settings_from(DataConfig, {"root": str(root), **data})
        (batch_size, eval_batch_size, num_workers, val_fraction, test_fraction, on_bad_image, balance, source, csv,
         multi_label, label_delimiter, columns, exclude, relabel) = data.values()
        if first_epoch < 0:
            raise ValueError(f"first_epoch must be >= 0; got {first_epoch}.")
        self.root = Path(root)
        self.preprocessing = preprocessing
        self.augment = settings_from(TrainAugment, augment, shorthand="preset")
        self.cache = settings_from(CacheConfig, {"features": False} if cache is False else
                                   None if cache is True else cache)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.on_bad_image, self.balance = on_bad_image, balance
        self.first_epoch = first_epoch
        self.bad_log = Path(bad_log) if bad_log is not None else None
        self.labels_from = {"source": source, "csv": csv, "multi_label": multi_label, "label_delimiter": label_delimiter,
                            "columns": dict(columns or {}), "exclude": exclude, "relabel": relabel}
        self.table = table
        self.scan = scan if scan is not None else scan_data(
            self.root, **self.labels_from, table=table, val_fraction=val_fraction, test_fraction=test_fraction,
            seed=seed)
        self.sample_weights = (balanced_sample_weights([y for _, y in self.scan.train], self.num_classes)
                               if balance == "sampler" else None)
        self._train_weights = self.sample_weights  # those of the images a fit reads (all but under batch limits)
        self.skipped: list[tuple[str, str]] = []  # predict: files that failed to decode
        self.cache_info: dict = {"used": False}
        self._features: FeatureSplits | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    @classmethod
    def from_dataframe(cls, df: Any, root: str | Path, **kwargs: Any) -> ImageFolderDataModule:
        """A datamodule over a pandas DataFrame with columns path,label[,split] (or path + one 0/1 column per class),
        paths relative to root; the other arguments are the constructor's. Checked exactly as a CSV is."""
        return cls(root, table=df, **kwargs)

    def replace(self, **changes: Any) -> ImageFolderDataModule:
        """A new datamodule with `changes` to the constructor arguments, reusing this scan when the split is
        unchanged (fit derives its training datamodule this way instead of setting attributes)."""
        args = {"root": self.root, "preprocessing": self.preprocessing, "augment": self.augment,
                "cache": self.cache, "batch_size": self.batch_size, "eval_batch_size": self.config.eval_batch_size,
                "num_workers": self.config.num_workers, "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction, "seed": self.seed, "on_bad_image": self.on_bad_image,
                "balance": self.balance, "first_epoch": self.first_epoch, "bad_log": self.bad_log,
                **self.labels_from, "table": self.table}
        unknown = sorted(set(changes) - set(args))
        if unknown:
            raise TypeError(f"replace() got unknown argument(s) {', '.join(unknown)}; expected {', '.join(args)}.")
        split_keys = ("root", "val_fraction", "test_fraction", "seed", *self.labels_from, "table")
        same_split = all(changes[k] is args[k] if k == "table" else changes[k] == args[k]  # a DataFrame: identity
                         for k in split_keys if k in changes)
        return ImageFolderDataModule(**{**args, **changes}, scan=self.scan if same_split else None)

    @property
    def classes(self) -> list[str]:
        return list(self.scan.classes)

    @property
    def num_classes(self) -> int:
        return len(self.scan.classes)

    @property
    def multi_label(self) -> bool:
        """Several labels per image (a table with a;b labels or 0/1 class columns): targets are (B, C) multi-hot."""
        return self.scan.multi_label

    @property
    def class_weights(self) -> list[float]:
        """Loss weights of the training split (data.balance: loss_weights), for TransferModule(class_weights=):
        n / (C x count_c) per class; multi-label: negatives / positives per class (BCE's pos_weight)."""
        labels = [y for _, y in self.scan.train]
        if self.multi_label:
            return positive_class_weights(labels, self.num_classes)
        return balanced_class_weights(labels, self.num_classes)

    def split_info(self) -> dict:
        """How the images were split and labelled: evaluate re-creates a carved val (and test) split from it."""
        info = {"layout": self.scan.layout, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "seed": self.seed}
        if self.labels_from["relabel"] is not None:  # evaluate gives this data the labels the run trained with
            info.update(relabel=self.labels_from["relabel"], root=str(self.root.resolve()))
        if self.table is not None:
            return {**info, "source": "dataframe", "multi_label": self.multi_label}
        if self.labels_from["source"] == "csv":
            return {**info, **self.labels_from, "multi_label": self.multi_label}
        return info

    @override
    def state_dict(self) -> dict:
        return {"split": self.split_info()}  # Lightning stores it in every checkpoint of a fit with this datamodule

    # -- setup -----------------------------------------------------------------------------------------------------

    @override
    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if trainer is None:  # called directly (no Trainer): images, with the given preprocessing
            self.setup_for(None, stage=stage)
            return
        self.setup_for(trainer.lightning_module, stage=stage, epochs=trainer.max_epochs,
                       device=trainer.strategy.root_device, limits=_batch_limits(trainer, stage))

    def setup_for(self, module: L.LightningModule | None, *, stage: str = "fit", epochs: int | None = None,
                  device: torch.device | None = None, limits: tuple[int | None, int | None] = (None, None)) -> None:
        """setup() for `module` without a Trainer (tlkit check and lr-find use it; setup() calls it): `epochs` is
        the fit's length (None = unlimited), `device` where features are extracted (None: CUDA when available),
        `limits` the (train, val) batches a run uses when it uses only a few (fast_dev_run, an int
        limit_train_batches): only those images are decoded and only their features extracted.

        Every setup asks `module` (tlkit.data.protocol.ServedModel) for its preprocessing, so a datamodule reused for
        another model serves that model's input size; a model of other classes is refused in one line."""
        model = self._served(module, stage)
        pre = self._preprocessing(model)
        self.input_size = pre.input_size
        scan = _limited(self.scan, limits, batch_sizes=(self.batch_size, self.eval_batch_size), seed=self.seed)
        eval_transform = build_eval_transform(pre)
        bad = {"on_bad": self.on_bad_image, "bad_log": self.bad_log, "seed": self.seed,
               "num_classes": self.num_classes if self.multi_label else None}
        if stage == "fit":
            self._train_weights = (balanced_sample_weights([y for _, y in scan.train], self.num_classes)
                                   if self.sample_weights is not None and scan is not self.scan else self.sample_weights)
            # FixRes: the model's smaller training size goes with its own eval preprocessing only
            train_pre = model.train_preprocessing if model is not None and model.preprocessing == pre else pre
            images = (ImageDataset(scan.train, build_train_transform(train_pre, self.augment), **bad),
                      ImageDataset(scan.val, eval_transform, **bad))
            self.train_set, self.val_set = self._fit_sets(model, scan, (pre, train_pre), images, _unlimited(epochs),
                                                          device)
        elif stage == "validate":
            frozen = self._frozen_features(model, pre, scan)
            self.val_set = frozen.val if frozen is not None else ImageDataset(scan.val, eval_transform, **bad)
        elif stage == "test":
            self.test_set = ImageDataset(self.scan.test, eval_transform, **bad)
        elif stage == "predict":
            self.predict_set = ImageDataset(self.scan.val, eval_transform, **bad, with_paths=True)

    def _served(self, module: Any, stage: str) -> ServedModel | None:
        """The model as the data sees it (None: no model, or a plain one used with the given preprocessing), after
        checking that it was built for this data's classes and kind of labels."""
        if module is None or (self.preprocessing is not None and not isinstance(module, ServedModel)):
            return None
        model = served_model(module, needed_by="ImageFolderDataModule")
        if stage != "predict" and list(model.classes) != self.classes:
            raise DataError(f"the model's classes {list(model.classes)} are not the data's {self.classes} (in label "
                            "order); build the model with classes=datamodule.classes.")
        if stage != "predict" and bool(model.multi_label) != self.multi_label:
            kind = ("multi-label", "single-label")
            raise DataError(f"the data is {kind[not self.multi_label]} but the model is {kind[not model.multi_label]};"
                            f" build the model with multi_label=datamodule.multi_label ({self.multi_label}).")
        return model

    def _preprocessing(self, model: ServedModel | None) -> Preprocessing:
        """The model's preprocessing, asked at every setup; a datamodule given its own must agree with the model."""
        given = self.preprocessing
        if model is None:
            if given is None:
                raise DataError("ImageFolderDataModule needs preprocessing: pass preprocessing=model.preprocessing, "
                                "or fit a tlkit model (it states its own, tlkit.data.protocol.ServedModel).")
            return given
        if given is not None and given != model.preprocessing:
            raise DataError(f"the datamodule's preprocessing ({_describe(given)}) is not the model's "
                            f"({_describe(model.preprocessing)}); leave preprocessing unset so each model gets its "
                            "own, or pass the model's.")
        return model.preprocessing

    def _fit_sets(self, model: ServedModel | None, scan: FolderScan, pres: tuple[Preprocessing, Preprocessing],
                  images: tuple[Dataset, Dataset], epochs: int, device: torch.device | None) -> tuple[Dataset, Dataset]:
        """(train, val) datasets of a fit: features for the epochs the model's plan serves from a frozen network,
        images for the rest (a PhasedDataset when both occur). A model that probes first (lp_ft's closed-form
        head) gets the features extracted for its probe even when no epoch reads them."""
        plan = self._cache_plan(model, epochs)
        if plan.epochs <= self.first_epoch:  # nothing to serve from the cache (a resumed lp_ft past its probe too)
            self.cache_info = {"used": False, **({"reason": plan.reason} if plan.reason else {})}
            if self.first_epoch == 0 and plan.probe_first:
                self.cache_info = {**self._feature_splits(plan, scan, pres, device).info, "served_epochs": 0,
                                   "phase": "closed-form probe"}
            return images
        features = self._feature_splits(plan, scan, pres, device)
        self.cache_info = dict(features.info)
        if plan.epochs >= epochs:
            return features.train, features.val
        self.cache_info["phase"] = "probe"
        self.cache_info["switch_epoch"] = plan.epochs
        return (PhasedDataset(features.train, images[0], plan.epochs),
                PhasedDataset(features.val, images[1], plan.epochs))

    def _cache_plan(self, model: ServedModel | None, epochs: int) -> CachePlan:
        """What the cache serves: the model's plan; models without one opt out, and cache.features: false serves
        no epoch (a closed-form probe still reads the features it fits on)."""
        if model is None:
            return CachePlan(0, "a plain model on the given preprocessing (no tlkit.data.protocol.ServedModel)")
        plan = model.cache_plan(epochs)
        return plan if self.cache.features else dataclasses.replace(plan, epochs=0, reason="cache.features is off")

    def _feature_splits(self, plan: CachePlan, scan: FolderScan, pres: tuple[Preprocessing, Preprocessing],
                        device: torch.device | None) -> FeatureSplits:
        """The network's features of train (K views) and val, extracted once per set of weights: a second setup
        (trainer.fit after tlkit check, lr-find, a validate) reuses them when the network and images are unchanged.
        `pres` = (eval preprocessing, training preprocessing)."""
        pre, train_pre = pres
        if self._reusable(plan.network, pre, scan, train_pre):
            return self._features
        run = Extraction(device=device or extraction_device("auto"), eval_batch_size=self.eval_batch_size,
                         num_workers=self.num_workers, channels_last=plan.channels_last,
                         on_bad=self.on_bad_image, bad_log=self.bad_log, progress=self._progress_bar())
        self._features = extract_splits(scan, plan, pre, augment=self.augment, cache=self.cache,
                                        seed=self.seed, run=run, train_pre=train_pre)
        return self._features

    def _reusable(self, network: torch.nn.Module | None, pre: Preprocessing, scan: FolderScan,
                  train_pre: Preprocessing | None = None) -> bool:
        """The features already extracted came from `network`'s weights, `pre` and `scan`'s images."""
        from tlkit.data.cache import weights_fingerprint

        f = self._features
        return (f is not None and network is not None and f.preprocessing == pre
                and f.train_preprocessing in (None, train_pre or f.train_preprocessing)
                and f.train.paths == [p for p, _ in scan.train] and f.val.paths == [p for p, _ in scan.val]
                and f.fingerprint == weights_fingerprint(network))

    def _progress_bar(self) -> bool:
        """Show the extraction bar when the trainer shows its own (trainer.progress_bar and a terminal in tlkit
        train); outside a Trainer, when stderr is a terminal."""
        trainer = self.trainer
        return trainer.progress_bar_callback is not None if trainer is not None else sys.stderr.isatty()

    def _frozen_features(self, model: ServedModel | None, pre: Preprocessing, scan: FolderScan
                         ) -> FeatureSplits | None:
        """Features already extracted from this model's frozen network with these weights (a linear probe's
        validate after its fit), else None: validating on them equals validating on images, minus the backbone."""
        if model is None or self._features is None:
            return None
        plan = model.cache_plan(0)
        return self._features if plan.prefix is None and self._reusable(plan.network, pre, scan) else None

    def feature_splits(self) -> FeatureSplits | None:
        """The cached features a fit set up (None when it trains on images only); the closed-form probe reads them."""
        return self._features

    # -- loaders ---------------------------------------------------------------------------------------------------

    def _workers(self, dataset: Dataset) -> int:
        return 0 if isinstance(dataset, CachedFeatures) else self.num_workers  # in-memory rows need no decoding

    @override
    def train_dataloader(self) -> DataLoader:
        return make_loader(self._ready(self.train_set, "fit"), batch_size=self.batch_size, shuffle=True,
                           num_workers=self._workers(self.train_set), sample_weights=self._train_weights,
                           seed=self.seed, epoch=self.first_epoch)

    @override
    def val_dataloader(self) -> DataLoader:
        return make_loader(self._ready(self.val_set, "fit or validate"), batch_size=self.eval_batch_size,
                           shuffle=False, num_workers=self._workers(self.val_set), epoch=self.first_epoch)

    @override
    def test_dataloader(self) -> DataLoader:
        if not self.scan.test:
            where = ("mark rows split=test in the table" if self.scan.layout == TABLE_LAYOUT
                     else f"add {self.root}/test/<class>/ images")
            raise DataError(
                f"{self.root} has no test split; {where}, or carve one from the "
                "training images with test_fraction (data.test_fraction), e.g. 0.1."
            )
        return make_loader(self._ready(self.test_set, "test"), batch_size=self.eval_batch_size, shuffle=False,
                           num_workers=self.num_workers)

    @override
    def predict_dataloader(self) -> DataLoader:
        """The val split's images as (images, paths) batches: trainer.predict returns {"probs", "paths"} per batch."""
        return make_loader(self._ready(self.predict_set, "predict"), batch_size=self.eval_batch_size, shuffle=False,
                           num_workers=self.num_workers, collate_fn=collate_paths)

    @staticmethod
    def _ready(dataset: Dataset | None, stage: str) -> Dataset:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) first (a Trainer does it); the datasets are built there.")
        return dataset
