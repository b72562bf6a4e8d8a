"""Train and eval transforms (albumentations on numpy HWC uint8 -> normalised CHW float tensor).

The eval transform is the single preprocessing function shared by validation, predict, TTA and export
(DESIGN.md contract 6): resize the short side to input_size / crop_pct, centre-crop input_size, normalise —
the same recipe as timm's eval preprocessing. Training augmentation (the seeds' list: flips, random crops and scales,
colour jitter, lens distortion, Cutout) is configured by TrainAugment, usually through a preset.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import Field, model_validator  # noqa: E402

from tlkit.data.preprocessing import Preprocessing  # noqa: E402
from tlkit.config import Section  # noqa: E402

CV2_INTERPOLATION = {
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
}


class ColorJitter(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of jittering an image; 0 = off."""
    brightness: float = Field(default=0.2, ge=0)
    """Brightness factor drawn from [1 - b, 1 + b]."""
    contrast: float = Field(default=0.2, ge=0)
    """Contrast factor drawn from [1 - c, 1 + c]."""
    saturation: float = Field(default=0.2, ge=0)
    """Saturation factor drawn from [1 - s, 1 + s]."""
    hue: float = Field(default=0.02, ge=0, le=0.5)
    """Hue shift drawn from [-h, h] (fraction of the colour wheel); keep small, hue carries class signal."""


class Cutout(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of masking an image; 0 = off."""
    holes: tuple[int, int] = (1, 1)
    """Number of masked rectangles, drawn from [min, max]."""
    size: tuple[float, float] = (0.1, 0.3)
    """Side of each rectangle as a fraction of the image side, drawn from [min, max]."""
    fill: float = 0.0
    """Pixel value (0-255) written into the holes before normalisation; 0 = black as in DeVries & Taylor 2017."""


class Rotate(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of a small rotation; 0 = off."""
    degrees: float = Field(default=10.0, ge=0, le=180)
    """Rotation angle drawn from [-degrees, degrees]."""


class Distortion(Section):
    p: float = Field(default=0.0, ge=0, le=1)
    """Probability of optical (lens) distortion; 0 = off."""
    limit: float = Field(default=0.1, ge=0, le=1)
    """Distortion strength drawn from [-limit, limit]."""


PRESET_NAMES = ("none", "light", "medium", "heavy")
# Each preset is a complete set of explicit values; `tlkit recipe show` prints them and any field can be overridden.
PRESETS: dict[str, dict[str, Any]] = {
    # Deterministic: the eval geometry, nothing random (a feature cache can reuse it).
    "none": {"crop": "center", "hflip": 0.0},
    # Small-data transfer default: mild scale-crop and mirror only.
    "light": {"crop": "random_resized", "crop_scale": (0.35, 1.0), "hflip": 0.5},
    "medium": {
        "crop": "random_resized",
        "crop_scale": (0.25, 1.0),
        "hflip": 0.5,
        "jitter": {"p": 0.8, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02},
        "cutout": {"p": 0.25, "holes": (1, 1), "size": (0.1, 0.25)},
    },
    "heavy": {
        "crop": "random_resized",
        "crop_scale": (0.08, 1.0),
        "hflip": 0.5,
        "jitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.05},
        "grayscale": 0.05,
        "blur": 0.1,
        "rotate": {"p": 0.3, "degrees": 15.0},
        "distortion": {"p": 0.2, "limit": 0.1},
        "cutout": {"p": 0.5, "holes": (1, 2), "size": (0.1, 0.3)},
    },
}


class TrainAugment(Section):
    """Training-time augmentation. The eval transform is untouched by all of this."""

    preset: Literal["none", "light", "medium", "heavy"] = "light"
    """Starting values (none = deterministic eval geometry; light = scale-crop + flip; medium adds jitter and
    Cutout; heavy adds rotation, blur, grey, lens distortion); fields set here override the preset's."""
    crop: Literal["random_resized", "short_side", "center"] = "random_resized"
    """random_resized (Inception style), short_side (ResNet: short side uniform in short_side, random crop), or
    center (eval geometry, no randomness)."""
    crop_scale: tuple[float, float] = (0.35, 1.0)
    """random_resized: area range as a fraction of the image; 0.35+ keeps the object in view on small data."""
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    """random_resized: aspect-ratio range."""
    short_side: tuple[int, int] | None = None
    """short_side: [min, max] short-side length before the crop; null = input_size x [256, 480] / 224."""
    hflip: float = Field(default=0.5, ge=0, le=1)
    """Horizontal flip probability; 0 for data where mirroring changes the label (digits, text)."""
    vflip: float = Field(default=0.0, ge=0, le=1)
    """Vertical flip probability; off because most photos have an up (fine for microscopy, satellite)."""
    jitter: ColorJitter = ColorJitter()
    """Colour jitter (brightness, contrast, saturation, hue)."""
    grayscale: float = Field(default=0.0, ge=0, le=1)
    """Probability of converting to grey (3 channels kept)."""
    blur: float = Field(default=0.0, ge=0, le=1)
    """Probability of a Gaussian blur (sigma 0.1-2)."""
    rotate: Rotate = Rotate()
    """Small rotations."""
    distortion: Distortion = Distortion()
    """Optical (lens) distortion."""
    cutout: Cutout = Cutout()
    """Cutout: mask random rectangles."""

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "light")
        if preset not in PRESETS:
            return data  # the Literal check reports it with the choices
        return _merge(PRESETS[preset], data)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> TrainAugment:
        for name in ("crop_scale", "crop_ratio", "short_side"):
            value = getattr(self, name)
            if value is not None and value[0] > value[1]:
                raise ValueError(f"{name} must be [min, max] with min <= max; got {list(value)}")
        holes, size = self.cutout.holes, self.cutout.size
        if holes[0] < 1 or holes[0] > holes[1]:
            raise ValueError(f"cutout.holes must be [min, max] with 1 <= min <= max; got {list(holes)}")
        if not 0 < size[0] <= size[1] <= 1:
            raise ValueError(f"cutout.size must be [min, max] fractions with 0 < min <= max <= 1; got {list(size)}")
        if not 0 < self.crop_scale[0] <= 1 or self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale values must lie in (0, 1]; got {list(self.crop_scale)}")
        return self

    @property
    def is_deterministic(self) -> bool:
        """True when the training input never varies (no random crop, flip or pixel change)."""
        probabilities = (self.hflip, self.vflip, self.jitter.p, self.grayscale, self.blur, self.rotate.p,
                         self.distortion.p, self.cutout.p)
        return self.crop == "center" and not any(probabilities)


def _merge(base: dict, override: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
