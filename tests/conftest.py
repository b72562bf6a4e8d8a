"""Shared fixtures: tiny generated images and folders, and a small preprocessing contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlkit.data.preprocessing import Preprocessing

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


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never write into the user's ~/.cache: converted weights and cached features go to a temp folder."""
    import os

    previous = os.environ.get("TLKIT_CACHE")
    os.environ["TLKIT_CACHE"] = str(tmp_path_factory.mktemp("tlkit-cache"))
    yield
    if previous is None:
        os.environ.pop("TLKIT_CACHE", None)
    else:
        os.environ["TLKIT_CACHE"] = previous


@pytest.fixture
def make_image():
    return write_image


@pytest.fixture
def make_class_folders():
    return write_class_folders


@pytest.fixture
def preprocessing() -> Preprocessing:
    return Preprocessing(input_size=32, crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def write_colour_classes(root: Path, *, per_class: int = 12, split: bool = True, size: int = 36) -> Path:
    """Learnable tiny dataset: each class is a distinct base colour plus noise (root/{train,val}/<class>/ or flat)."""
    colours = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 50, 40)}
    rng = np.random.default_rng(0)
    for name, rgb in colours.items():
        for i in range(per_class):
            side = "train" if (not split or i < per_class * 2 // 3) else "val"
            folder = root / side / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(-40, 41, (size, size + (i % 3) * 4, 3))
            pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.png")
    return root


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    return write_colour_classes(tmp_path / "colours")


def tiny_recipe_dict(root: Path, **sections) -> dict:
    """A recipe dict for a fast run: timm's tiny random test_efficientnet at 32 px, no workers, no progress bar."""
    recipe = {
        "version": 1,
        "name": "tiny",
        "seed": 0,
        "backbone": {"name": "test_efficientnet", "weights": "none", "input_size": 32},
        "strategy": {"kind": "linear_probe"},
        "data": {"root": str(root), "batch_size": 8, "num_workers": 0},
        "optim": {"lr": 0.05},
        "trainer": {"epochs": 2, "progress_bar": False, "accelerator": "cpu", "devices": 1},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny finished run shared by the evaluate / predict / export tests: (data root, run dir, fit metrics).

    test_resnet (its random pooled features vary with colour) learns the colour classes in ~1 s; the recipe's TTA
    policy is hflip so 'the checkpoint's policy' differs from the single view.
    """
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    tmp = tmp_path_factory.mktemp("trained")
    root = write_colour_classes(tmp / "colours")
    recipe = validate_recipe(
        tiny_recipe_dict(
            root,
            backbone={"name": "test_resnet"},
            optim={"name": "adamw", "lr": 0.3},
            trainer={"epochs": 3},
            tta={"policy": "hflip"},
        )
    )
    metrics = fit(recipe, run_dir=tmp / "run")
    return root, tmp / "run", metrics
