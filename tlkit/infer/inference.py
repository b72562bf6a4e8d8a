"""Run a model over image files with a TTA policy: probabilities, the files that failed, and how long it took.

Shared by evaluate and predict, so both decode (images.load_rgb), preprocess (tta.ViewMaker, built on the eval
transform) and batch exactly the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tlkit.data.images import load_rgb
from tlkit.data.preprocessing import Preprocessing
from tlkit.infer.precision import autocast, resolve_precision
from tlkit.infer.tta import (
    DEFAULT_MAX_VIEWS_PER_FORWARD,
    TTAPolicy,
    ViewMaker,
    forward_views,
    images_per_batch,
)
from tlkit.model.tasks import SingleLabel, Task

DECODE_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError)


@dataclass
class InferenceResult:
    """Probabilities for the files that decoded, in input order, plus the ones that did not."""

    probs: np.ndarray  # [n_ok, C] float32, rows sum to 1 (multi-label: independent sigmoid probabilities)
    indices: list[int]  # positions in the input list of the rows of `probs`
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0  # wall time: decode + views + forwards (warm-up excluded)
    forward_seconds: float = 0.0  # model forwards only
    views: int = 1
    precision: str = "fp32"  # what the forwards ran in (see tlkit.infer.precision)

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / max(1, len(self.indices))

    @property
    def forward_ms_per_image(self) -> float:
        return 1000.0 * self.forward_seconds / max(1, len(self.indices))


class _ViewDataset(Dataset):
    """Path -> (index, views [k, 3, S, S] or None, error or None). A file that fails to decode is reported, not
    replaced by another one."""

    def __init__(self, paths: Sequence[str], make_views: ViewMaker):
        self.paths = list(paths)
        self.make_views = make_views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = load_rgb(self.paths[index])
        except DECODE_ERRORS as exc:
            detail = str(exc).splitlines()[0][:120] if str(exc) else ""
            return index, None, f"unreadable: {type(exc).__name__}{': ' + detail if detail else ''}"
        return index, self.make_views(image), None


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    ok = [(i, v) for i, v, _ in items if v is not None]
    failed = [(i, e) for i, v, e in items if v is None]
    views = torch.stack([v for _, v in ok]) if ok else None
    return [i for i, _ in ok], views, failed


def predict_files(
    model: torch.nn.Module,
    paths: Sequence[str],
    policy: TTAPolicy,
    preprocessing: Preprocessing,
    *,
    max_views_per_forward: int = DEFAULT_MAX_VIEWS_PER_FORWARD,
    num_workers: int = 0,
    warmup: bool = False,
    progress: bool | None = None,
    desc: str | None = None,
    precision: str = "fp32",
) -> InferenceResult:
    """Class probabilities for each decodable file in `paths` under `policy` (model in eval mode, no gradients);
    sigmoid probabilities for a multi-label model (the probabilities its `task` gives; a plain module: softmax).

    Args:
        warmup: run one untimed forward of the first batch's shape first, so `seconds` measures steady state
            (evaluate's ms/image); predict skips it.
        progress: tqdm bar; None = only on a terminal.
        precision: fp32 | bf16 | auto (bf16 autocast where the device computes it natively; tlkit.infer.precision).
    """
    loader = DataLoader(
        _ViewDataset(paths, ViewMaker(policy, preprocessing)),
        batch_size=images_per_batch(policy, max_views_per_forward),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    task = model.task if isinstance(getattr(model, "task", None), Task) else SingleLabel()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    size = preprocessing.input_size
    if warmup and paths:
        first_chunk = min(max_views_per_forward, len(paths) * policy.num_views)
        with torch.inference_mode(), autocast(precision, device):
            model(torch.zeros(first_chunk, 3, size, size, device=device))
    probs: list[torch.Tensor] = []
    indices: list[int] = []
    failed: list[tuple[str, str]] = []
    forward_seconds = 0.0
    started = time.perf_counter()
    with torch.inference_mode():
        bar = tqdm(loader, desc=desc or policy.label, unit="batch", disable=(not progress) if progress is not None else None,
                   leave=False)
        for batch_indices, views, batch_failed in bar:
            failed += [(str(paths[i]), why) for i, why in batch_failed]
            if views is None:
                continue
            t0 = time.perf_counter()
            with autocast(precision, device):
                out = forward_views(model, views.to(device), policy.aggregate,
                                    max_views_per_forward=max_views_per_forward, task=task)
            if out.is_cuda:
                torch.cuda.synchronize()
            forward_seconds += time.perf_counter() - t0
            probs.append(out.float().cpu())
            indices += batch_indices
    seconds = time.perf_counter() - started
    model.train(was_training)
    num_classes = probs[0].shape[-1] if probs else 0
    return InferenceResult(
        probs=torch.cat(probs).numpy() if probs else np.zeros((0, num_classes), dtype=np.float32),
        indices=indices,
        failed=failed,
        seconds=seconds,
        forward_seconds=forward_seconds,
        views=policy.num_views,
        precision=precision,
    )
