"""Prediction at scale through Lightning: a Classifier and its TTA policy as a LightningModule (ViewsModule), a
prediction writer that hands rows out as batches finish (PredictionWriter), and `predict_inputs`, which runs them
over files, tables and streams with loader workers on one device or several.

One device: rows go to the caller in pieces as they are predicted, so the output grows during the run and memory
stays flat. Several devices (`devices > 1`, Lightning's ddp_spawn): each process writes its rows to its own part file
with the row's key; the parts are merged by key at the end (the order of one device), one row at a time.
TransferModule.predict_step serves a datamodule's plain batches; this module adds what `tlkit predict` needs: TTA
views per image, files that fail to decode, and a Classifier loaded from a checkpoint without training state.
"""

from __future__ import annotations

import heapq
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from typing_extensions import override

from tlkit.infer.inference import InferenceResult
from tlkit.infer.precision import autocast, resolve_precision
from tlkit.infer.predict import label_set_rows, top_k_rows
from tlkit.infer.sources import FileViews, PredictInputs, collate, stream_views
from tlkit.infer.tta import TTAPolicy, ViewMaker, forward_views, images_per_batch
from tlkit.model.classifier import Classifier

log = logging.getLogger(__name__)
FLUSH_SECONDS = 2.0  # rows waiting longer than this for a full piece are written anyway (a slow model still shows)
ACCELERATORS = ("cpu", "gpu", "auto")


class ViewsModule(L.LightningModule):
    """A Classifier under a TTA policy for `trainer.predict`: each batch's views go through the model together and
    are aggregated per image (tlkit.infer.tta.forward_views, as evaluate and Predictor do), in fp32 or bf16."""

    def __init__(self, classifier: Classifier, policy: TTAPolicy, *, max_views_per_forward: int,
                 precision: str = "fp32"):
        super().__init__()
        self.classifier = classifier
        self.policy = policy
        self.max_views_per_forward = max_views_per_forward
        self.requested_precision = precision

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        probs = None
        if batch["views"] is not None:
            precision = resolve_precision(self.requested_precision, self.device)
            with autocast(precision, self.device):
                probs = forward_views(self.classifier, batch["views"], self.policy.aggregate,
                                      max_views_per_forward=self.max_views_per_forward,
                                      task=self.classifier.task).float().cpu().numpy()
        return {"keys": batch["keys"], "names": batch["names"], "probs": probs, "failed": batch["failed"]}


@dataclass(frozen=True)
class RowMaker:
    """Probabilities -> output rows: top-k labels, or a multi-label model's label set (tlkit.infer.predict)."""

    classes: list[str]
    k: int
    thresholds: list[float] | None = None

    def __call__(self, probs: np.ndarray, names: list[str]) -> list[dict]:
        result = InferenceResult(probs=probs, indices=list(range(len(names))))
        if self.thresholds is not None:
            return label_set_rows(result, names, self.classes, self.thresholds)
        return top_k_rows(result, names, self.classes, self.k)


class PredictionWriter(BasePredictionWriter):
    """Rows out as batches finish. One process: `emit(rows)` in pieces of `chunk` rows (or whatever waited
    FLUSH_SECONDS), files that failed in `skipped`. Several: each rank appends its rows and failures, keyed, to
    `parts/rank<r>.jsonl`, merged by `merge_parts` at the end. Remembers a Ctrl-C / SIGTERM (Lightning turns it into
    SystemExit) so the caller can raise it again."""

    def __init__(self, emit: Callable[[list[dict]], None] | None, make_rows: RowMaker, *, total: int, chunk: int,
                 parts: str | None = None, progress: bool | None = None):
        super().__init__(write_interval="batch")
        self.emit, self.make_rows, self.total, self.chunk, self.parts = emit, make_rows, total, chunk, parts
        self.progress = progress
        self.skipped: list[tuple[str, str]] = []
        self.predicted = 0
        self.interrupt: BaseException | None = None
        self._buffer: list[dict] = []
        self._emitted = 0
        self._part: Any = None
        self._bar: Any = None
        self._flushed = time.monotonic()

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.parts is not None:
            self._part = open(Path(self.parts) / f"rank{trainer.global_rank}.jsonl", "w", encoding="utf-8")  # noqa: SIM115 - closed at the end
        if trainer.global_rank == 0:
            share = -(-self.total // trainer.world_size)
            self._bar = tqdm(total=share, unit="img", desc="predict" if trainer.world_size == 1 else "predict rank 0",
                             disable=(not self.progress) if self.progress is not None else None, leave=False)

    @override
    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        rows = self.make_rows(prediction["probs"], prediction["names"]) if prediction["probs"] is not None else []
        failed = [(name, why) for _, name, why in prediction["failed"]]
        self.predicted += len(rows)
        if self._bar is not None:
            self._bar.update(len(rows) + len(failed))
        if self._part is not None:
            lines = [{"k": key, "row": row} for key, row in zip(prediction["keys"], rows)]
            lines += [{"k": key, "skip": [name, why]} for key, name, why in prediction["failed"]]
            self._part.write("".join(json.dumps(line) + "\n" for line in lines))
            self._part.flush()
            return
        self.skipped += failed
        self._buffer += rows
        while len(self._buffer) >= self.chunk:
            self._write(self._buffer[: self.chunk])
            self._buffer = self._buffer[self.chunk:]
        if self._buffer and time.monotonic() - self._flushed > FLUSH_SECONDS:
            self._write(self._buffer)
            self._buffer = []

    def _write(self, rows: list[dict]) -> None:
        self.emit(rows)
        self._emitted += len(rows)
        self._flushed = time.monotonic()
        if self.total > self.chunk:
            log.info("predicted %s of %s images (%s skipped)", f"{self._emitted:,}", f"{self.total:,}",
                     f"{len(self.skipped):,}")

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._buffer:
            self._write(self._buffer)
            self._buffer = []
        self._close()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = exception
        self._close()

    def _close(self) -> None:
        if self._part is not None:
            self._part.close()
            self._part = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def merge_parts(parts: str | Path) -> Iterator[dict]:
    """The ranks' part files as one sequence by key, read a line at a time ({"k", "row"} or {"k", "skip"})."""
    files = [open(p, encoding="utf-8") for p in sorted(Path(parts).glob("rank*.jsonl"))]  # noqa: SIM115
    try:
        yield from heapq.merge(*[(json.loads(line) for line in f) for f in files], key=lambda entry: entry["k"])
    finally:
        for f in files:
            f.close()


@dataclass
class PredictRun:
    """What predict_inputs did: rows predicted, files skipped (path, reason) and wall seconds."""

    predicted: int
    skipped: list[tuple[str, str]]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return (self.predicted + len(self.skipped)) / max(self.seconds, 1e-9)


def predict_inputs(classifier: Classifier, inputs: PredictInputs, policy: TTAPolicy, emit: Callable[[list[dict]], None],
                   make_rows: RowMaker, *, chunk: int, num_workers: int = 0, devices: int = 1,
                   accelerator: str = "cpu", max_views_per_forward: int, precision: str = "fp32",
                   progress: bool | None = None) -> PredictRun:
    """Predict every input through a Lightning Trainer; `emit(rows)` receives the rows in order, in pieces as they
    finish (with several devices: merged at the end). Re-raises a Ctrl-C / SIGTERM as KeyboardInterrupt."""
    started = time.perf_counter()
    make_views = ViewMaker(policy, classifier.preprocessing)
    batch_size = images_per_batch(policy, max_views_per_forward)
    loaders = []
    if inputs.files:
        loaders.append(DataLoader(FileViews(inputs.files, make_views), batch_size=batch_size, shuffle=False,
                                  num_workers=num_workers, collate_fn=collate))
    offset = len(inputs.files)
    for root, split, count in inputs.stream_splits():
        from tlkit.data.stream import litdata_module

        loaders.append(litdata_module().StreamingDataLoader(stream_views(root, split, make_views, offset),
                                                      batch_size=batch_size, num_workers=num_workers,
                                                      collate_fn=collate))
        offset += count
    module = ViewsModule(classifier, policy, max_views_per_forward=max_views_per_forward, precision=precision)
    with tempfile.TemporaryDirectory(prefix="tlkit-predict-") as parts:
        writer = PredictionWriter(emit if devices == 1 else None, make_rows, total=offset, chunk=chunk, parts=parts if devices > 1 else None,
                                  progress=progress)
        trainer = L.Trainer(accelerator=accelerator, devices=devices,
                            strategy="ddp_spawn" if devices > 1 else "auto", callbacks=[writer], logger=False,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        try:
            trainer.predict(module, dataloaders=loaders, return_predictions=False)
        except SystemExit:
            if writer.interrupt is not None:  # Lightning's graceful shutdown of a Ctrl-C: an interrupt again
                raise writer.interrupt from None
            raise
        if devices == 1:
            return PredictRun(writer.predicted, writer.skipped, time.perf_counter() - started)
        return _emit_merged(parts, emit, chunk, started)


def _emit_merged(parts: str, emit: Callable[[list[dict]], None], chunk: int, started: float) -> PredictRun:
    predicted, skipped, piece = 0, [], []
    for entry in merge_parts(parts):
        if "skip" in entry:
            skipped.append(tuple(entry["skip"]))
            continue
        piece.append(entry["row"])
        predicted += 1
        if len(piece) == chunk:
            emit(piece)
            piece = []
    if piece:
        emit(piece)
    return PredictRun(predicted, skipped, time.perf_counter() - started)


def check_accelerator(accelerator: str, devices: int) -> None:
    from tlkit.errors import DataError, did_you_mean

    if accelerator not in ACCELERATORS:
        raise DataError(f"accelerator must be one of {', '.join(ACCELERATORS)}; got {accelerator!r}."
                        f"{did_you_mean(accelerator, ACCELERATORS)}")
    if devices < 1:
        raise DataError(f"devices must be 1 or more; got {devices}.")


__all__ = ["PredictRun", "PredictionWriter", "RowMaker", "ViewsModule", "merge_parts", "predict_inputs"]
