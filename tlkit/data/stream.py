"""Streaming data on LitData: `optimize_data` turns a folder or table into LitData chunks (images re-encoded as JPEG
at a bounded side, labels, split and class names), and `StreamDataModule` trains and validates from them through
litdata.StreamingDataset / StreamingDataLoader with the same transforms as the folder path.

LitData shards a stream across DDP processes and loader workers itself, and a StreamingDataLoader saves its
position in Lightning checkpoints (state_dict), so a resumed fit continues mid-stream. The optional dependency is
imported only here, by the functions that need it: `pip install tlkit[stream]`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from typing_extensions import override

from tlkit.config import settings_from
from tlkit.data.settings import DEFAULT_SEED, CacheConfig, DataConfig, TrainAugment
from tlkit.data.workers import cpus_available, resolve_workers
from tlkit.errors import DataError
from tlkit.io import atomic_write
from tlkit.seeding import derive_seed

log = logging.getLogger(__name__)

MANIFEST = "tlkit_stream.json"  # written last: a folder without it is not a finished tlkit stream
STREAM_FORMAT = "tlkit-litdata"
SPLITS = ("train", "val", "test")
DEFAULT_MAX_SIDE = 256  # covers a 224 px eval crop (crop_pct 0.875 resizes the short side to 256)


def _litdata():
    try:
        import litdata
    except ImportError as exc:  # an optional extra: name the install line, not a traceback
        raise DataError("streaming data needs LitData; install it with pip install 'tlkit[stream]' "
                        "(or pip install litdata).") from exc
    return litdata


# -- writing -----------------------------------------------------------------------------------------------------


def _encode(item: tuple[str, int, int], *, max_side: int, quality: int) -> dict | None:
    """One sample as LitData stores it: the image as JPEG bytes, longest side at most max_side (never enlarged)."""
    from PIL import Image

    from tlkit.data.images import decode

    path, label, index = item
    try:
        pixels = decode(path)  # EXIF orientation, every mode to RGB: the folder path's decoding
    except DataError as exc:
        log.warning("skipped %s: %s", path, str(exc).splitlines()[0])
        return None
    image = Image.fromarray(pixels)
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return {"image": buffer.getvalue(), "label": int(label), "index": int(index)}


def _write_split(samples: list, out: str, *, encode: Any, workers: int, progress: bool, name: str) -> Counter:
    """Encode `samples` in `workers` processes (decoding is the cost) and write them, in order, as LitData chunks
    with LitData's own writer (the format litdata.optimize writes); returns images written per label."""
    from concurrent.futures import ProcessPoolExecutor

    from litdata.streaming.writer import BinaryWriter
    from tqdm.auto import tqdm

    Path(out).mkdir(parents=True, exist_ok=True) if not out.startswith("s3://") else None
    writer = BinaryWriter(out, chunk_bytes="64MB")
    items = [(path, label, i) for i, (path, label) in enumerate(samples)]
    written: Counter = Counter()
    bar = tqdm(total=len(items), desc=f"optimize {name}", unit="img", disable=not progress)
    pool = ProcessPoolExecutor(workers, mp_context=_fork_context()) if workers > 1 else None
    try:
        results = pool.map(encode, items, chunksize=16) if pool is not None else map(encode, items)
        for sample in results:
            bar.update()
            if sample is not None:  # a file that does not decode is left out (logged), never replaced
                writer.add_item(sum(written.values()), sample)
                written[sample["label"]] += 1
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    writer.done()
    writer.merge(1)
    return written


def _fork_context():
    import multiprocessing

    # fork: the workers inherit the imported modules (a spawned worker re-imports torch, seconds per process)
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


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


def optimize_data(src: str | Path, out: str | Path, *, max_side: int = DEFAULT_MAX_SIDE, quality: int = 90,
                  num_workers: int | None = None, overwrite: bool = False, progress: bool = True,
                  data: DataConfig | Mapping | None = None, seed: int = DEFAULT_SEED) -> dict:
    """Write the splits of the data at `src` (a folder, or a table with data={"source": "csv", ...}) as LitData
    chunks under out/{train,val,test}/ plus out/tlkit_stream.json (classes, counts, encoding); returns that manifest.

    The split is the folder run's (same scan, fractions and seed), so a stream and its folder train on the same images.
    num_workers: encoding processes (None = one per CPU this process may use).
    """
    from tlkit.data.table import scan_data

    if not 16 <= max_side <= 8192:
        raise DataError(f"max_side must be 16-8192 pixels; got {max_side} (256 covers a 224 px model).")
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
    _litdata()
    workers = num_workers or cpus_available()
    splits: dict[str, dict] = {}
    for split in SPLITS:
        samples = getattr(scan, split)
        if samples:
            written = _write_split(samples, f"{out}/{split}", encode=partial(_encode, max_side=max_side,
                                   quality=quality), workers=workers, progress=progress, name=split)
            splits[split] = {"images": sum(written.values()),
                             "per_class": {scan.classes[y]: n for y, n in sorted(written.items())}}
    manifest = {"format": STREAM_FORMAT, "version": 1, "classes": list(scan.classes), "splits": splits,
                "encoding": {"format": "JPEG", "max_side": max_side, "quality": quality},
                "source": {"root": os.path.abspath(str(src)), "layout": scan.layout, "seed": seed,
                           "val_fraction": config.val_fraction, "test_fraction": config.test_fraction},
                "skipped": [list(s) for s in scan.skipped]}
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


def streaming_dataset_class():
    """litdata.StreamingDataset with a tlkit transform (defined on first use: LitData is an optional install)."""
    litdata = _litdata()

    class TransformedStream(litdata.StreamingDataset):
        """A StreamingDataset whose samples go through a tlkit transform, reseeded from (seed, epoch, index) as the
        folder path's ImageDataset is, so an image's augmentation does not depend on the worker that reads it."""

        def __init__(self, input_dir: str, *, transform: Any, seed: int, shuffle: bool):
            super().__init__(input_dir, shuffle=shuffle, drop_last=shuffle, seed=seed)
            self.image_transform, self.sample_seed = transform, seed

        def __getitem__(self, index: Any) -> tuple[Any, int]:
            from PIL import Image

            sample = super().__getitem__(index)
            image = np.asarray(Image.open(io.BytesIO(sample["image"])).convert("RGB"))
            reseed = getattr(self.image_transform, "reseed", None)
            if reseed is not None:
                reseed(derive_seed(self.sample_seed, "sample", int(self.current_epoch), int(sample["index"])))
            return self.image_transform(image), int(sample["label"])

    return TransformedStream


class StreamDataModule(L.LightningDataModule):
    """A tlkit stream (made by `tlkit data optimize`) -> train / val / test StreamingDataLoaders.

    Transforms are the folder path's (tlkit.data.augment) with the fitted module's preprocessing; class names are
    known right after construction (`dm.classes`), so a model can be built. Every epoch reads images (the feature
    cache serves folders and tables only); a frozen backbone still trains correctly, at the backbone's cost.
    """

    def __init__(self, root: str | Path, *, preprocessing: Any = None, augment: TrainAugment | Mapping | str | None = None,
                 batch_size: int = DataConfig.model_fields["batch_size"].default, eval_batch_size: int | None = None,
                 num_workers: int | str = "auto", seed: int = DEFAULT_SEED):
        super().__init__()
        self.root = str(root)
        self.manifest = read_manifest(self.root)
        self.preprocessing = preprocessing
        self.augment = settings_from(TrainAugment, augment, shorthand="preset")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.cache = CacheConfig(features=False)
        self.cache_info: dict = {"used": False, "reason": "data.source litdata reads images every epoch"}
        self.sets: dict[str, Any] = {}
        self._loaders: dict[str, Any] = {}

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
    def setup(self, stage: str) -> None:
        from tlkit.data.augment import build_eval_transform, build_train_transform
        from tlkit.data.protocol import served_model

        module = self.trainer.lightning_module if self.trainer is not None else None
        served = served_model(module, needed_by="StreamDataModule") if module is not None else None
        if served is not None and list(served.classes) != self.classes:
            raise DataError(f"the model's classes {list(served.classes)} differ from the stream's {self.classes}; "
                            "build the model with StreamDataModule(...).classes.")
        pre = self.preprocessing or (served.preprocessing if served is not None else None)
        if pre is None:
            raise ValueError("StreamDataModule needs preprocessing: pass preprocessing=model.preprocessing, or fit "
                             "a model that states it (tlkit.data.protocol.ServedModel; TransferModule does).")
        train_pre = served.train_preprocessing if served is not None and self.preprocessing is None else pre
        dataset = streaming_dataset_class()
        eval_transform = build_eval_transform(pre)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for split in wanted:
            if not self.count(split):
                raise DataError(f"stream {self.root} has no {split} split; re-run tlkit data optimize on data "
                                f"with a {split} split (or a {split}_fraction).")
            transform = build_train_transform(train_pre, self.augment) if split == "train" else eval_transform
            self.sets[split] = dataset(f"{self.root}/{split}", transform=transform, seed=self.seed,
                                       shuffle=split == "train")

    def _loader(self, split: str):
        if split not in self.sets:
            raise RuntimeError(f"call setup() for the {split} split first (a Trainer does it).")
        if split not in self._loaders:  # one loader per split: its state_dict is what a resumed fit restores
            batch = self.batch_size if split == "train" else self.eval_batch_size
            workers = resolve_workers(self.num_workers, self.trainer.num_devices if self.trainer is not None else 1)
            self._loaders[split] = _litdata().StreamingDataLoader(
                self.sets[split], batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
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

