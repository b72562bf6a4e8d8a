"""Train and eval transforms (albumentations on numpy HWC uint8 -> normalised CHW float tensor).

The eval transform is the single preprocessing function shared by validation, predict, TTA and export
(DESIGN.md contract 6): resize the short side to input_size / crop_pct, centre-crop input_size, normalise —
the same recipe as timm's eval preprocessing. Training augmentation (the seeds' list: flips, random crops and scales,
colour jitter, lens distortion, Cutout) is configured by TrainAugment, usually through a preset.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tlkit.data.preprocessing import Preprocessing  # noqa: E402
from tlkit.data.settings import (  # noqa: E402,F401
    PRESET_NAMES,
    PRESETS,
    ColorJitter,
    Cutout,
    Distortion,
    Rotate,
    TrainAugment,
)

CV2_INTERPOLATION = {
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
}


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

    def reseed(self, seed: int) -> None:
        """Fix the RNG to `seed` now (e.g. per image and view, so a cached augmented view is reproducible)."""
        self.pipeline.set_random_seed(seed % 2**32)
        self._seeded_for = (os.getpid(), torch.initial_seed())

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


def _eval_geometry(pre: Preprocessing) -> list[A.BasicTransform]:
    size = pre.input_size
    return [build_short_side_resize(pre, eval_resize_size(pre)), A.CenterCrop(height=size, width=size)]


def build_eval_transform(pre: Preprocessing) -> _AlbumentationsToTensor:
    """Resize short side to input_size/crop_pct, centre-crop input_size, normalise. Deterministic."""
    return _AlbumentationsToTensor(A.Compose([*_eval_geometry(pre), build_normalize(pre)], strict=True))


def short_side_range(pre: Preprocessing, aug: TrainAugment) -> tuple[int, int]:
    """The ResNet recipe's [256, 480] for a 224 crop, scaled to the model's input size unless set."""
    if aug.short_side is not None:
        return aug.short_side
    return round(pre.input_size * 256 / 224), round(pre.input_size * 480 / 224)


def _crop_steps(pre: Preprocessing, aug: TrainAugment) -> list[A.BasicTransform]:
    size, interpolation = pre.input_size, CV2_INTERPOLATION[pre.interpolation]
    if aug.crop == "center":
        return _eval_geometry(pre)
    if aug.crop == "short_side":
        low, high = short_side_range(pre, aug)
        return [
            A.SmallestMaxSize(max_size=list(range(low, high + 1)), interpolation=interpolation,
                              area_for_downscale="image"),
            A.RandomCrop(height=size, width=size, pad_if_needed=True),
        ]
    return [
        A.RandomResizedCrop(
            size=(size, size), scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio),
            interpolation=interpolation, area_for_downscale="image",
        )
    ]


def build_train_transform(pre: Preprocessing, aug: TrainAugment | None = None) -> _AlbumentationsToTensor:
    """Geometry (crop, flips, rotation, lens) -> colour (jitter, grey, blur) -> Cutout -> normalise."""
    aug = aug or TrainAugment()
    steps = _crop_steps(pre, aug)
    if aug.hflip > 0:
        steps.append(A.HorizontalFlip(p=aug.hflip))
    if aug.vflip > 0:
        steps.append(A.VerticalFlip(p=aug.vflip))
    if aug.rotate.p > 0:
        steps.append(A.Rotate(limit=(-aug.rotate.degrees, aug.rotate.degrees), border_mode=cv2.BORDER_REFLECT_101,
                              p=aug.rotate.p))
    if aug.distortion.p > 0:
        steps.append(A.OpticalDistortion(distort_limit=(-aug.distortion.limit, aug.distortion.limit),
                                         border_mode=cv2.BORDER_REFLECT_101, p=aug.distortion.p))
    j = aug.jitter
    if j.p > 0:
        steps.append(A.ColorJitter(brightness=(max(0.0, 1 - j.brightness), 1 + j.brightness),
                                   contrast=(max(0.0, 1 - j.contrast), 1 + j.contrast),
                                   saturation=(max(0.0, 1 - j.saturation), 1 + j.saturation),
                                   hue=(-j.hue, j.hue), p=j.p))
    if aug.grayscale > 0:
        steps.append(A.ToGray(num_output_channels=3, p=aug.grayscale))
    if aug.blur > 0:
        steps.append(A.GaussianBlur(sigma_limit=(0.1, 2.0), p=aug.blur))
    c = aug.cutout
    if c.p > 0:
        steps.append(A.CoarseDropout(num_holes_range=tuple(c.holes), hole_height_range=tuple(c.size),
                                     hole_width_range=tuple(c.size), fill=c.fill, p=c.p))
    steps.append(_normalize(pre))
    return _AlbumentationsToTensor(A.Compose(steps, strict=True))
