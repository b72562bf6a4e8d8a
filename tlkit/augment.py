"""Train and eval transforms (albumentations on numpy HWC uint8 -> normalised CHW float tensor).

The eval transform is the single preprocessing function shared by validation, predict, TTA and export
(DESIGN.md contract 6): resize the short side to input_size / crop_pct, centre-crop input_size, normalise —
the same recipe as timm's eval preprocessing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tlkit.backbones import Preprocessing  # noqa: E402

CV2_INTERPOLATION = {
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
}


@dataclass(frozen=True)
class TrainAugment:
    """Basic train-time augmentation; the augmentation issue extends this with presets, jitter and Cutout."""

    hflip: float = 0.5
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def is_deterministic(self) -> bool:
        """True when the training input never varies between epochs (feature caching may then reuse it)."""
        return False  # random-resized crop is always on


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class _AlbumentationsToTensor:
    """Callable: uint8 HWC numpy -> float CHW tensor through an albumentations pipeline.

    albumentations keeps its own RNG, untouched by global seeding. We seed it from torch's initial seed in the
    process that runs it: in the main process that is the run's seed, in a DataLoader worker it is torch's per-worker
    seed (base_seed + worker_id, drawn from the seeded main RNG). So the same seed gives the same augmentations, and
    workers never repeat each other's.
    """

    def __init__(self, pipeline: A.Compose):
        self.pipeline = pipeline
        self._seeded_for: tuple[int, int] | None = None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        key = (os.getpid(), torch.initial_seed())
        if key != self._seeded_for:
            self.pipeline.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_for = key
        return _to_tensor(self.pipeline(image=image)["image"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


def _normalize(pre: Preprocessing) -> A.Normalize:
    return A.Normalize(mean=pre.mean, std=pre.std, max_pixel_value=255.0)


def eval_resize_size(pre: Preprocessing) -> int:
    """Short-side length before the centre crop, as timm computes it."""
    return math.floor(pre.input_size / pre.crop_pct)


def build_short_side_resize(pre: Preprocessing, short_side: int) -> A.SmallestMaxSize:
    """Resize so the short side is `short_side`, with the contract's interpolation (the eval transform's first step;
    TTA views use it at other lengths)."""
    return A.SmallestMaxSize(
        max_size=short_side,
        interpolation=CV2_INTERPOLATION[pre.interpolation],
        area_for_downscale="image",  # antialiased downscale, closer to PIL's resize than plain cubic
    )


def build_normalize(pre: Preprocessing) -> A.Normalize:
    """uint8 HWC -> float32 (x/255 - mean) / std: the eval transform's last step, shared with TTA views."""
    return _normalize(pre)


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left (y, x) of the centred size x size crop, rounded as albumentations' CenterCrop rounds it."""
    return (height - size) // 2, (width - size) // 2


def build_eval_transform(pre: Preprocessing) -> _AlbumentationsToTensor:
    """Resize short side to input_size/crop_pct, centre-crop input_size, normalise. Deterministic."""
    size = pre.input_size
    return _AlbumentationsToTensor(
        A.Compose(
            [
                build_short_side_resize(pre, eval_resize_size(pre)),
                A.CenterCrop(height=size, width=size),
                build_normalize(pre),
            ],
            strict=True,
        )
    )


def build_train_transform(pre: Preprocessing, aug: TrainAugment) -> _AlbumentationsToTensor:
    """Random-resized crop to input_size, horizontal flip, normalise."""
    size = pre.input_size
    steps: list[A.BasicTransform] = [
        A.RandomResizedCrop(
            size=(size, size),
            scale=tuple(aug.crop_scale),
            ratio=tuple(aug.crop_ratio),
            interpolation=CV2_INTERPOLATION[pre.interpolation],
            area_for_downscale="image",
        )
    ]
    if aug.hflip > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    steps.append(_normalize(pre))
    return _AlbumentationsToTensor(A.Compose(steps, strict=True))
