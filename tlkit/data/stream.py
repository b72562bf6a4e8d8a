"""Streaming data on LitData: `optimize_data` turns a folder or table into LitData chunks (images re-encoded as JPEG
with a bounded shorter side, labels in the manifest, split and class names), and `StreamDataModule` trains,
validates and tests from them with the same transforms as the folder path, for a recipe (data.source: litdata) or a
plain Lightning Trainer.

A run reads no image file: its scan (`stream_scan`) lists item ids `<root>/<split>#<position>` with the labels the
manifest stores; preflight checks labels and repeats the file checks made when the stream was written; provenance
fingerprints the manifest, index and chunk files (`stream_files`); cached features are keyed per item id plus the
split's identity (`split_identity`). LitData shards a stream across DDP processes and loader workers itself, and a
StreamingDataLoader saves its position in Lightning checkpoints, so a fit stopped mid-epoch continues mid-stream;
one resumed after a finished epoch starts its loader at that epoch. The optional dependency is imported only by the
functions that need it: `pip install tlkit[stream]`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from tlkit.config import settings_from
from tlkit.data.cache import extraction_device
from tlkit.data.encode import encode
from tlkit.data.features import Extraction, FeatureSplits
from tlkit.data.preflight import STREAM_LAYOUT, file_checks
from tlkit.data.protocol import CachePlan
from tlkit.data.scan import STREAM_MANIFEST, FolderScan
from tlkit.data.settings import DEFAULT_SEED, CacheConfig, DataConfig, TrainAugment
from tlkit.data.workers import cpus_available, local_devices, resolve_workers
from tlkit.errors import DataError
from tlkit.io import atomic_write
from tlkit.seeding import derive_seed

log = logging.getLogger(__name__)

MANIFEST = STREAM_MANIFEST  # written last: a folder without it is not a finished tlkit stream
STREAM_FORMAT = "tlkit-litdata"
SPLITS = ("train", "val", "test")
DEFAULT_SHORT_SIDE = 256  # a 224 px model's eval resize (crop_pct 0.875: the shorter side to 256)


def litdata_module():
    try:
        import litdata
    except ImportError as exc:  # an optional extra: name the install line, not a traceback
        raise DataError("streaming data needs LitData; install it with pip install 'tlkit[stream]' "
                        "(or pip install litdata).") from exc
    # LitData logs its cache and mmap choices at INFO for every dataset it opens (one per split and loader
    # worker): noise in a training log. Its warnings still show.
    logging.getLogger("litdata").setLevel(max(logging.WARNING, logging.getLogger("litdata").level))
    return litdata


# -- writing -----------------------------------------------------------------------------------------------------


def _write_split(samples: list, out: str, *, encode: Any, pool: Any, progress: bool, name: str,
                 order: Any = None) -> list[tuple[int, int]]:
    """Encode `samples` in the pool's processes (decoding is the cost) and write them as LitData chunks with
    LitData's own writer (the format litdata.optimize writes), in `order` (positions into samples; None = as given);
    returns (label, index in samples) of each item written, in stream order. The index is the item's augmentation
    seed, and puts cached features back in the folder's order."""
    from litdata.streaming.writer import BinaryWriter
    from tqdm.auto import tqdm

    Path(out).mkdir(parents=True, exist_ok=True) if not out.startswith("s3://") else None
    writer = BinaryWriter(out, chunk_bytes="64MB")
    items = [(*samples[i], int(i)) for i in (range(len(samples)) if order is None else order)]
    written: list[tuple[int, int]] = []
    bar = tqdm(total=len(items), desc=f"optimize {name}", unit="img", disable=not progress)
    try:
        results = pool.map(encode, items, chunksize=16) if pool is not None else map(encode, items)
        for sample in results:
            bar.update()
            if sample is not None:  # a file that does not decode is left out (logged), never replaced
                writer.add_item(len(written), sample)
                written.append((sample["label"], sample["index"]))
    finally:
        bar.close()
    writer.done()
    writer.merge(1)
    return written


@contextmanager
def _encoding_pool(workers: int):
    """`workers` encoding processes (None for one: encode here), shared by every split. Fresh processes (spawn),
    not forks: this process has torch loaded, and a fork beside its thread pools can deadlock the child on a lock
    one of those threads held. A worker imports only tlkit.data.encode (PIL, numpy): well under a second."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers < 2:
        yield None
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown()


def _refuse_output(out: str, overwrite: bool) -> None:
    if out.startswith("s3://"):
        return  # LitData refuses a non-empty bucket prefix itself
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise DataError(f"output {out} is a file; give a new or empty folder.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise DataError(f"output {out} is not empty; choose a new folder or pass --overwrite to replace it.")
        if not (path / MANIFEST).is_file():
            raise DataError(f"output {out} is not empty and holds no tlkit stream ({MANIFEST}); --overwrite only "
                            "replaces an earlier stream. Choose a new folder.")
        shutil.rmtree(path)


def optimize_data(src: str | Path, out: str | Path, *, short_side: int = DEFAULT_SHORT_SIDE, quality: int = 90,
                  num_workers: int | None = None, overwrite: bool = False, progress: bool = True,
                  data: DataConfig | Mapping | None = None, seed: int = DEFAULT_SEED) -> dict:
    """Write the splits of the data at `src` (a folder, or a table with data={"source": "csv", ...}) as LitData
    chunks under out/{train,val,test}/ plus out/tlkit_stream.json (classes, counts, encoding); returns that manifest.

    The split is the folder run's (same scan, fractions and seed), so a stream and its folder train on the same images.
    num_workers: encoding processes (None = one per CPU this process may use).
    """
    from tlkit.data.table import scan_data

    if not 16 <= short_side <= 8192:
        raise DataError(f"short_side must be 16-8192 pixels; got {short_side} (256 covers a 224 px model).")
    config = settings_from(DataConfig, {**dict(data or {}), "root": str(src)})
    if (Path(str(src)) / MANIFEST).is_file():
        raise DataError(f"{src} is already a tlkit stream; optimize reads an image folder or a label table.")
    out = str(out)
    _refuse_output(out, overwrite)
    scan = scan_data(config.root, source=config.source, csv=config.csv, multi_label=config.multi_label,
                     label_delimiter=config.label_delimiter, columns=config.columns, exclude=config.exclude,
                     relabel=config.relabel, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                     seed=seed)
    if scan.multi_label:
        raise DataError(f"{src} is multi-label; streams hold one label per image for now. Train it from the table.")
    litdata_module()
    workers = num_workers or cpus_available()
    splits: dict[str, dict] = {}
    with _encoding_pool(workers) as pool:
        for split in (name for name in SPLITS if getattr(scan, name)):
            samples = getattr(scan, split)
            # Training images in a seeded random order: a scan lists them class by class, and LitData hands each
            # loader worker (and DDP process) a contiguous part of a chunk, whose batches would then hold one class.
            order = np.random.default_rng(derive_seed(seed, "stream order")).permutation(len(samples)) \
                if split == "train" else None
            written = _write_split(samples, f"{out}/{split}", pool=pool, progress=progress, name=split, order=order,
                                   encode=partial(encode, short_side=short_side, quality=quality))
            labels = [y for y, _ in written]
            splits[split] = {"images": len(labels),
                             "per_class": {scan.classes[y]: n for y, n in sorted(Counter(labels).items())},
                             "labels": labels, "scan_index": [i for _, i in written]}
    # The checks that need the original files (exact duplicates across splits) run here, where the files are.
    checked = file_checks(scan)["warnings"]
    manifest = {"format": STREAM_FORMAT, "version": 2, "classes": list(scan.classes), "splits": splits,
                "encoding": {"format": "JPEG", "short_side": short_side, "quality": quality},
                "source": {"root": os.path.abspath(str(src)), "layout": scan.layout, "seed": seed,
                           "val_fraction": config.val_fraction, "test_fraction": config.test_fraction},
                "skipped": [list(s) for s in scan.skipped], "file_checks": checked}
    text = json.dumps(manifest, indent=2) + "\n"
    if out.startswith("s3://"):
        import fsspec

        with fsspec.open(f"{out}/{MANIFEST}", "w") as f:
            f.write(text)
    else:
        atomic_write(Path(out) / MANIFEST, text)
    return manifest


# -- reading -----------------------------------------------------------------------------------------------------


def read_manifest(root: str | Path) -> dict:
    """The stream's manifest; DataError naming the fix when `root` is not a finished tlkit stream."""
    root = str(root)
    where = f"{root}/{MANIFEST}"
    try:
        if root.startswith("s3://"):
            import fsspec

            with fsspec.open(where, "r") as f:
                text = f.read()
        else:
            text = Path(where).read_text()
        manifest = json.loads(text)
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"{root} is not a tlkit stream (no readable {MANIFEST}); make one with "
                        f"tlkit data optimize SRC {root}.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != STREAM_FORMAT:
        raise DataError(f"{where} is not a tlkit stream manifest (format {STREAM_FORMAT!r}); make one with "
                        "tlkit data optimize.")
    return manifest


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def streaming_dataset_class():
    """litdata.StreamingDataset with a tlkit transform (defined on first use: LitData is an optional install)."""
    litdata = litdata_module()

    class TransformedStream(litdata.StreamingDataset):
        """A StreamingDataset whose samples go through a tlkit transform, reseeded from (seed, epoch, index) as the
        folder path's ImageDataset is, so an image's augmentation does not depend on the worker that reads it."""

        def __init__(self, input_dir: str, *, transform: Any, seed: int, shuffle: bool):
            super().__init__(input_dir, shuffle=shuffle, drop_last=shuffle, seed=seed)
            self.image_transform, self.sample_seed = transform, seed

        def __getitem__(self, index: Any) -> tuple[Any, int]:
            sample = super().__getitem__(index)
            image = decode_jpeg(sample["image"])
            reseed = getattr(self.image_transform, "reseed", None)
            if reseed is not None:
                # LitData counts epochs from 1, the folder path (and Lightning) from 0: the same image gets the same
                # crop and flip in the same epoch as in a folder run (index: its place in the folder's scan)
                epoch = int(self.current_epoch) - 1
                reseed(derive_seed(self.sample_seed, "sample", epoch, int(sample["index"])))
            return self.image_transform(image), int(sample["label"])

    return TransformedStream


# -- what a run needs to know about a stream (tlkit.run reads these as it reads a folder scan) ----------------------


@dataclass
class StreamScan(FolderScan):
    """A stream as a scan: its splits as (item id, label) samples in the order of the folder it was written from
    (a run on cached features then draws the folder run's batches), ids `<root>/<split>#<position in the stream>`
    (no file behind them: tlkit.data.preflight runs only label checks on it, plus `file_checks`, made on the original
    images by `tlkit data optimize`)."""

    file_checks: list[str] = field(default_factory=list)


def item_id(root: str, split: str, position: int) -> str:
    return f"{root}/{split}#{position}"


def stream_scan(root: str, manifest: dict) -> StreamScan:
    """The StreamScan of the stream at `root` from its manifest (labels are stored there, so nothing else is read)."""
    splits = {}
    for split in SPLITS:
        info = manifest["splits"].get(split)
        labels = info.get("labels") if info else []
        if info and (labels is None or len(labels) != info["images"]):
            raise DataError(f"stream {root} lists no labels for its {split} split (an older or damaged "
                            f"{MANIFEST}); write it again with tlkit data optimize SRC {root} --overwrite.")
        items = [(item_id(root, split, i), int(y)) for i, y in enumerate(labels)]
        order = info.get("scan_index") if info else None  # the folder's order: cached rows are served in it
        splits[split] = [items[i] for i in np.argsort(order, kind="stable")] if order else items
    return StreamScan(classes=list(manifest["classes"]), layout=STREAM_LAYOUT, root=root,
                      skipped=[tuple(s) for s in manifest.get("skipped", [])],
                      file_checks=list(manifest.get("file_checks", [])), **splits)


def _open(path: str, mode: str = "rb"):
    if "://" in path:
        import fsspec

        return fsspec.open(path, mode).open()
    return open(path, mode)


def stream_files(root: str, manifest: dict | None = None) -> list[str]:
    """The files that hold the stream (manifest, each split's index.json and chunks): what identifies its data."""
    manifest = manifest or read_manifest(root)
    files = [f"{root}/{MANIFEST}"]
    for split in manifest["splits"]:
        with _open(f"{root}/{split}/index.json", "r") as f:
            index = json.load(f)
        files += [f"{root}/{split}/index.json", *(f"{root}/{split}/{c['filename']}" for c in index["chunks"])]
    return files


def split_identity(root: str, split: str) -> str:
    """What changes when a split is written again: its index.json (chunk names, sizes, item counts) and, for a local
    stream, each chunk's size and modification time. Cheap: nothing of the chunks is read."""
    digest = hashlib.sha256()
    index_path = f"{root}/{split}/index.json"
    with _open(index_path) as f:
        raw = f.read()
    digest.update(raw)
    if "://" not in root:
        for chunk in json.loads(raw)["chunks"]:
            stat = os.stat(f"{root}/{split}/{chunk['filename']}")
            digest.update(f"{chunk['filename']}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


# -- the datamodule ----------------------------------------------------------------------------------------------


class StreamDataModule(L.LightningDataModule):
    """A tlkit stream (made by `tlkit data optimize`) -> train / val / test loaders, for `tlkit train` (recipe
    `data: {source: litdata, root: OUT}`) or a plain Lightning Trainer.

    Transforms are the folder path's (tlkit.data.augment) with the fitted module's preprocessing; class names are
    known right after construction (`dm.classes`), so a model can be built. Images stream through LitData's
    StreamingDataLoader, which shards them across DDP processes and loader workers and saves its position in
    Lightning checkpoints, so a resumed fit continues where it stopped. When every epoch of a fit trains on a frozen
    backbone (a linear probe, finetune_top's prefix), the backbone's features are extracted once per stream item
    and served from memory, kept in the feature cache between runs (cache.disk) as the folder path's are.
    """

    def __init__(self, root: str | Path, *, preprocessing: Any = None, augment: TrainAugment | Mapping | str | None = None,
                 batch_size: int = DataConfig.model_fields["batch_size"].default, eval_batch_size: int | None = None,
                 num_workers: int | str = "auto", seed: int = DEFAULT_SEED,
                 cache: CacheConfig | Mapping | bool | None = None, balance: str = "none", first_epoch: int = 0,
                 bad_log: str | Path | None = None, on_bad_image: str = "skip", manifest: dict | None = None):
        super().__init__()
        self.root = str(root) if "://" in str(root) else os.path.abspath(str(root))
        self.manifest = manifest if manifest is not None else read_manifest(self.root)
        self.preprocessing = preprocessing
        self.augment = settings_from(TrainAugment, augment, shorthand="preset")
        self.cache = settings_from(CacheConfig, {"features": False} if cache is False else
                                   None if cache is True else cache)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.workers_setting = num_workers
        self.num_workers = resolve_workers(num_workers, local_devices())
        self.seed, self.balance, self.first_epoch = seed, balance, first_epoch
        self.bad_log, self.on_bad_image = bad_log, on_bad_image  # a stream's items decoded when written
        if balance == "sampler":
            raise DataError("balance: sampler cannot draw from a stream (LitData reads it in its own order); use "
                            "balance: loss_weights.")
        self.scan = stream_scan(self.root, self.manifest)
        self.cache_info: dict = {"used": False}
        self.sets: dict[str, Any] = {}
        self._loaders: dict[str, Any] = {}
        self._features: FeatureSplits | None = None

    def replace(self, **changes: Any) -> StreamDataModule:
        """A new datamodule with `changes` to the constructor arguments (the manifest is not read again)."""
        args = {"root": self.root, "preprocessing": self.preprocessing, "augment": self.augment,
                "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                "num_workers": self.workers_setting, "seed": self.seed, "cache": self.cache,
                "balance": self.balance, "first_epoch": self.first_epoch, "bad_log": self.bad_log,
                "on_bad_image": self.on_bad_image}
        unknown = sorted(set(changes) - set(args))
        if unknown:
            raise TypeError(f"replace() got unknown argument(s) {', '.join(unknown)}; expected {', '.join(args)}.")
        return StreamDataModule(**{**args, **changes}, manifest=self.manifest)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def multi_label(self) -> bool:
        return False

    def count(self, split: str) -> int:
        """Images stored for `split` (0 when the stream has none)."""
        return int(self.manifest["splits"].get(split, {}).get("images", 0))

    @property
    def class_weights(self) -> list[float]:
        """n / (C x count_c) over the training split (data.balance: loss_weights), as the folder path computes it."""
        per_class = self.manifest["splits"]["train"]["per_class"]
        n = sum(per_class.values())
        return [float(n / (self.num_classes * per_class[c])) if per_class.get(c) else 0.0 for c in self.classes]

    @override
    def state_dict(self) -> dict:
        return {"split": {"layout": STREAM_LAYOUT, "root": self.root}}

    # -- setup -----------------------------------------------------------------------------------------------------

    @override
    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if trainer is None:
            self.setup_for(None, stage=stage)
            return
        self.setup_for(trainer.lightning_module, stage=stage, epochs=trainer.max_epochs,
                       device=trainer.strategy.root_device)

    def setup_for(self, module: Any, *, stage: str = "fit", epochs: int | None = None,
                  device: torch.device | None = None, limits: Any = None) -> None:
        """Build the datasets of `stage` for `module` (tlkit.data.protocol.ServedModel), with or without a Trainer
        (tlkit's fit sets up here first, so the closed-form probe reads the features). `limits` is accepted for the
        folder datamodule's signature; a stream's loader stops where the trainer stops it."""
        from tlkit.data.augment import build_eval_transform, build_train_transform
        from tlkit.data.protocol import served_model

        served = served_model(module, needed_by="StreamDataModule") if module is not None else None
        if served is not None and list(served.classes) != self.classes:
            raise DataError(f"the model's classes {list(served.classes)} differ from the stream's {self.classes}; "
                            "build the model with StreamDataModule(...).classes.")
        pre = self.preprocessing or (served.preprocessing if served is not None else None)
        if pre is None:
            raise ValueError("StreamDataModule needs preprocessing: pass preprocessing=model.preprocessing, or fit "
                             "a model that states it (tlkit.data.protocol.ServedModel; TransferModule does).")
        train_pre = served.train_preprocessing if served is not None and self.preprocessing is None else pre
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for split in wanted:
            if not self.count(split):
                raise DataError(f"stream {self.root} has no {split} split; re-run tlkit data optimize on data "
                                f"with a {split} split (or a {split}_fraction).")
        run = Extraction(device=device or extraction_device("auto"), eval_batch_size=self.eval_batch_size,
                         num_workers=self.num_workers, progress=self._progress_bar(),
                         channels_last=bool(getattr(module, "channels_last", False)))
        features = self._features_for(served, stage, epochs, (pre, train_pre), run)
        dataset = streaming_dataset_class()
        for split in wanted:
            if features is not None and split != "test":
                self.sets[split] = features.train if split == "train" else features.val
                continue
            transform = (build_train_transform(train_pre, self.augment) if split == "train" else
                         build_eval_transform(pre))
            self.sets[split] = dataset(f"{self.root}/{split}", transform=transform, seed=self.seed,
                                       shuffle=split == "train")
        self._loaders = {k: v for k, v in self._loaders.items() if k not in wanted}

    def _features_for(self, served: Any, stage: str, epochs: int | None, pres: tuple, run: Extraction
                      ) -> FeatureSplits | None:
        """The cached features `stage` serves (None: images). A fit serves them when every epoch trains on the
        frozen network; a closed-form probe (lp_ft) gets them extracted for its fit even when no epoch reads them."""
        if served is None or stage not in ("fit", "validate"):
            return None
        plan = served.cache_plan(sys.maxsize if epochs is None or epochs < 0 else int(epochs))
        if stage == "validate":  # a linear probe's validate after its fit: the same network, the same rows
            return self._features if self._reusable(plan, pres) and plan.prefix is None else None
        total = sys.maxsize if epochs is None or epochs < 0 else int(epochs)
        if not self.cache.features:
            self.cache_info = {"used": False, "reason": "cache.features is off"}
            return None
        if plan.epochs >= total and plan.epochs > self.first_epoch:
            self.cache_info = dict(self._extract(plan, pres, run).info)
            return self._features
        if plan.epochs > 0 and plan.probe_first and self.first_epoch == 0:
            self.cache_info = {**self._extract(plan, pres, run).info, "served_epochs": 0,
                               "phase": "closed-form probe"}
            return None
        reason = plan.reason or ("a stream serves cached features only when every epoch of the fit trains on the "
                                 "frozen backbone; the frozen epochs read images")
        self.cache_info = {"used": False, "reason": reason}
        return None

    def _reusable(self, plan: CachePlan, pres: tuple) -> bool:
        from tlkit.data.cache import weights_fingerprint

        f = self._features
        return (f is not None and plan.network is not None and f.preprocessing == pres[0]
                and f.train_preprocessing in (None, pres[1]) and f.fingerprint == weights_fingerprint(plan.network))

    def _extract(self, plan: CachePlan, pres: tuple, run: Extraction) -> FeatureSplits:
        from tlkit.data.stream_features import extract_stream_features

        if not self._reusable(plan, pres):
            self._features = extract_stream_features(self.root, self.scan, plan, pres[0], augment=self.augment,
                                                     cache=self.cache, seed=self.seed, run=run, train_pre=pres[1])
        return self._features

    def feature_splits(self) -> FeatureSplits | None:
        """The cached features a fit set up (None when it reads images); the closed-form probe reads them."""
        return self._features

    def _progress_bar(self) -> bool:
        trainer = self.trainer
        return trainer.progress_bar_callback is not None if trainer is not None else sys.stderr.isatty()

    # -- loaders ---------------------------------------------------------------------------------------------------

    def _loader(self, split: str):
        from tlkit.data.cache import CachedFeatures
        from tlkit.data.datamodule import make_loader

        if split not in self.sets:
            raise RuntimeError(f"call setup() for the {split} split first (a Trainer does it).")
        if split not in self._loaders:  # one loader per split: its state_dict is what a resumed fit restores
            batch = self.batch_size if split == "train" else self.eval_batch_size
            dataset = self.sets[split]
            if isinstance(dataset, CachedFeatures):  # rows in memory: the folder path's seeded, resumable loader
                self._loaders[split] = make_loader(dataset, batch_size=batch, shuffle=split == "train",
                                                   num_workers=0, seed=self.seed, epoch=self.first_epoch)
            else:
                devices = self.trainer.num_devices if self.trainer is not None else 1
                workers = resolve_workers(self.workers_setting, devices)
                loader = litdata_module().StreamingDataLoader(dataset, batch_size=batch, num_workers=workers,
                                                        persistent_workers=workers > 0)
                # LitData counts epochs from 1 and starts each pass at the next one (order and augmentation follow
                # it). Lightning restores a loader's state only when it stopped mid-epoch; a fit resumed after a
                # finished epoch starts at first_epoch, so the loader must too (a mid-epoch state overrides this).
                loader.current_epoch = self.first_epoch
                self._loaders[split] = loader
        return self._loaders[split]

    @override
    def train_dataloader(self):
        return self._loader("train")

    @override
    def val_dataloader(self):
        return self._loader("val")

    @override
    def test_dataloader(self):
        return self._loader("test")
