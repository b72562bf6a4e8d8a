"""Unlabelled image files for `trainer.predict`: a folder (searched recursively) or a list of files and folders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import DataLoader
from typing_extensions import override

from tlkit.data.augment import build_eval_transform
from tlkit.data.datamodule import (
    ImageDataset,
    PathBatches,
    collate_paths,
    make_loader,
    resolve_num_workers,
)
from tlkit.data.images import collect_inputs
from tlkit.data.preprocessing import Preprocessing
from tlkit.data.scan import read_header
from tlkit.errors import DataNotFoundError

log = logging.getLogger(__name__)


class ImageFilesDataModule(PathBatches):
    """Image files -> (images, paths) batches through the eval transform, for `trainer.predict(model, datamodule=dm)`
    (TransferModule.predict_step returns {"probs": (N, C), "paths": [...]} per batch).

    Files that are missing, not images, or unreadable from their header are listed in `dm.skipped` at construction;
    files that fail to decode during prediction are added to it as their batches arrive. A bad file is never
    replaced by another, so every returned path has its own probabilities. DataNotFoundError when nothing is left.

    Args:
        inputs: a folder (images below it, recursively; hidden files skipped), a file, or a list of either.
        preprocessing: the eval transform's contract; None = the predicting module's `preprocessing`.
        batch_size, num_workers: the loader's ("auto" = the CPUs per device, at most 8).
    """

    def __init__(self, inputs: str | Path | Sequence[str | Path], *, preprocessing: Preprocessing | None = None,
                 batch_size: int = 64, num_workers: int | str = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        files, skipped = collect_inputs(items)
        self.files: list[str] = []
        for path in files:
            _, reason = read_header(Path(path))
            if reason is None:
                self.files.append(path)
            else:
                skipped.append((path, reason))
        for path, reason in skipped:
            log.warning("skipped %s (%s)", path, reason)
        if not self.files:
            first = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise DataNotFoundError(f"No image files to predict{first}; pass image files or folders of images.")
        self.skipped: list[tuple[str, str]] = skipped
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.predict_set: ImageDataset | None = None

    @override
    def setup(self, stage: str) -> None:
        pre = self.preprocessing
        if pre is None:
            module = self.trainer.lightning_module if self.trainer is not None else None
            pre = getattr(module, "preprocessing", None)
        if pre is None:
            raise ValueError("ImageFilesDataModule needs preprocessing: pass preprocessing=model.preprocessing, or "
                             "predict with a model that has a `preprocessing` attribute (TransferModule does).")
        self.input_size = pre.input_size
        self.predict_set = ImageDataset([(p, -1) for p in self.files], build_eval_transform(pre), on_bad="skip",
                                        with_paths=True)

    @override
    def predict_dataloader(self) -> DataLoader:
        if self.predict_set is None:
            raise RuntimeError("call setup('predict') first (trainer.predict does it).")
        return make_loader(self.predict_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                           collate_fn=collate_paths)
