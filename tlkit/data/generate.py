"""Built-in datasets written as image folders, so the quickstart needs no download."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

GENERATORS = ("digits",)


def write_digits(root: str | Path, *, size: int = 32) -> Path:
    """Write scikit-learn's bundled 8x8 digits (1,797 images) as `root/<digit>/<index>.png`, upscaled to `size`.

    Written to a temporary sibling folder and renamed into place, so an interrupted write never leaves half a dataset.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    if root.exists():
        return root
    digits = load_digits()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for index, (image, label) in enumerate(zip(digits.images, digits.target)):
            pixels = (image * (255.0 / 16.0)).round().astype(np.uint8)  # digits are 0..16 intensities
            folder = tmp / str(label)
            folder.mkdir(exist_ok=True)
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(folder / f"{index:04d}.png")
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def generate(kind: str, root: str | Path) -> Path:
    if kind == "digits":
        return write_digits(root)
    raise ValueError(f"Unknown built-in dataset {kind!r}; expected one of {', '.join(GENERATORS)}.")
