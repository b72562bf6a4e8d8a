"""Train and eval transforms (albumentations on numpy HWC uint8 -> normalised CHW float tensor).

The eval transform is tlkit.data.preprocessing.eval_preprocess (numpy + Pillow, shared by validation, predict, TTA
and export) wrapped as a tensor; it equals timm's eval transform on PIL images. Every pipeline here ends in that
module's `normalize`, so train and eval normalise identically. Training augmentation (the usual list: flips, random
crops and scales, colour jitter, lens distortion, Cutout) is configured by TrainAugment, usually through a preset.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tlkit.config import settings_from  # noqa: E402
from tlkit.data.preprocessing import (  # noqa: E402,F401  (eval_resize_size: re-exported)
    Preprocessing,
    as_rgb,
    eval_crop,
    eval_preprocess,
    eval_resize_size,
    normalize,
)
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
    """Callable: uint8 HWC numpy -> float CHW tensor: optional eval geometry, an albumentations pipeline on uint8,
    then preprocessing.normalize.

    albumentations keeps its own RNG, untouched by global seeding. We seed it from torch's initial seed in the
    process that runs it: in the main process that is the run's seed, in a DataLoader worker it is torch's per-worker
    seed (base_seed + worker_id, drawn from the seeded main RNG). So the same seed gives the same augmentations, and
    workers never repeat each other's.
    """

    def __init__(self, pipeline: A.Compose, pre: Preprocessing, *, eval_geometry: bool = False):
        self.pipeline = pipeline
        self.pre = pre
        self.eval_geometry = eval_geometry  # crop "center": start from the eval preprocessing's own patch
        self._seeded_for: tuple[int, int] | None = None

    def reseed(self, seed: int) -> None:
        """Fix the RNG to `seed` now (e.g. per image and view, so a cached augmented view is reproducible)."""
        self.pipeline.set_random_seed(seed % 2**32)
        self._seeded_for = (os.getpid(), torch.initial_seed())

    def __call__(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        image = as_rgb(image)  # a PIL image (torchvision's ImageFolder) or any uint8 array, as the eval transform
        key = (os.getpid(), torch.initial_seed())
        if key != self._seeded_for:
            self.pipeline.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_for = key
        if self.eval_geometry:
            image = np.ascontiguousarray(eval_crop(image, self.pre))
        return torch.from_numpy(normalize(self.pipeline(image=image)["image"], self.pre))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


class EvalTransform:
    """Callable: a PIL image (any mode, EXIF orientation applied) or a uint8 array (HxW grey, HxWx1/3/4 RGB(A)) ->
    float32 CHW tensor through preprocessing.eval_preprocess. Deterministic. Fits torchvision datasets, which hand
    transforms PIL images, as well as tlkit's own decoded arrays."""

    def __init__(self, pre: Preprocessing):
        self.pre = pre

    def __call__(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        return torch.from_numpy(eval_preprocess(as_rgb(image), self.pre))

    def __repr__(self) -> str:
        return f"EvalTransform({self.pre})"


def build_eval_transform(pre: Preprocessing) -> EvalTransform:
    """Resize short side to input_size/crop_pct (Pillow), centre-crop input_size, normalise: the one eval
    preprocessing (tlkit.data.preprocessing) as a tensor transform."""
    return EvalTransform(pre)


def short_side_range(pre: Preprocessing, aug: TrainAugment) -> tuple[int, int]:
    """The ResNet recipe's [256, 480] for a 224 crop, scaled to the model's input size unless set."""
    if aug.short_side is not None:
        return aug.short_side
    return round(pre.input_size * 256 / 224), round(pre.input_size * 480 / 224)


def _crop_steps(pre: Preprocessing, aug: TrainAugment) -> list[A.BasicTransform]:
    # Random crops stay in albumentations (cv2, area-averaged downscale): only the eval path must be reproducible
    # outside tlkit, and that one is Pillow's (tlkit.data.preprocessing).
    size, interpolation = pre.input_size, CV2_INTERPOLATION[pre.interpolation]
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


def build_train_transform(pre: Preprocessing, aug: TrainAugment | dict | str | None = None
                          ) -> _AlbumentationsToTensor:
    """Geometry (crop, flips, rotation, lens) -> colour (jitter, grey, blur) -> Cutout -> normalise. `aug`: a
    TrainAugment, its dict or a preset name (none, light, medium, heavy); None = the recipe's default. The transform
    takes PIL images and uint8 arrays, as build_eval_transform's."""
    aug = settings_from(TrainAugment, aug, shorthand="preset")
    steps = [] if aug.crop == "center" else _crop_steps(pre, aug)  # center: the eval patch, made before the pipeline
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
    return _AlbumentationsToTensor(A.Compose(steps, strict=True), pre, eval_geometry=aug.crop == "center")
