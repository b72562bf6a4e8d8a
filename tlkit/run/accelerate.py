"""GPU-ready trainer settings: which precision a device can run, and torch.compile as a phase callback."""

from __future__ import annotations

import logging
import time

import lightning as L
from typing_extensions import override

from tlkit.errors import RecipeError

log = logging.getLogger(__name__)


def runs_on_cuda(accelerator: str) -> bool:
    """Whether Lightning will put this run on CUDA GPUs (auto picks them when present)."""
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_precision(precision: str, accelerator: str) -> None:
    """16-mixed is fp16 autocast with a gradient scaler, made for CUDA GPUs without bfloat16 (V100, T4). Lightning
    accepts it on CPU too, where float16 kernels are emulated; refuse that before any data is read."""
    if precision == "16-mixed" and not runs_on_cuda(accelerator):
        raise RecipeError(f"trainer.precision 16-mixed needs a CUDA GPU (accelerator is {accelerator!r} and no GPU "
                          "runs it); use 32, or bf16-mixed on CPUs with AMX and on Ampere or newer GPUs.")


class CompileEmbedder(L.Callback):
    """trainer.compile: the model's image -> features network (the backbone, where the time goes) is compiled in
    place with torch.compile when fitting starts. Its parameters and state_dict keys stay the same, so checkpoints,
    EMA, freezing and the feature cache are unchanged; the first batches pay the compilation."""

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        started = time.perf_counter()
        pl_module.classifier.embedder.compile()  # nn.Module.compile: lazy, compiled at the first forward
        log.info("trainer.compile: backbone wrapped with torch.compile (%.1f s); the first steps compile it",
                 time.perf_counter() - started)
