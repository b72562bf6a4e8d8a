"""Shared fixtures: tiny generated images and folders, and a small preprocessing contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlkit.backbones import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_image(path: Path, size: tuple[int, int] = (24, 24), seed: int = 0) -> Path:
    """Write a small random RGB image (format from the suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_class_folders(folder: Path, counts: dict[str, int], suffix: str = ".png") -> None:
    """folder/<class>/<class>_<i><suffix> for each class, images of 16-40 px."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            size = (16 + (i * 7) % 25, 16 + (i * 5) % 25)
            write_image(folder / name / f"{name}_{i}{suffix}", size, seed=100 * c + i)


@pytest.fixture
def make_image():
    return write_image


@pytest.fixture
def make_class_folders():
    return write_class_folders


@pytest.fixture
def preprocessing() -> Preprocessing:
    return Preprocessing(input_size=32, crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
