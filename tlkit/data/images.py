"""Decode one image file to RGB uint8 numpy: EXIF orientation applied, every mode converted, alpha composited.

The decoding itself lives in tlkit.data.preprocessing (numpy + Pillow only), because the export bundle ships that
module and must decode exactly as training and predict do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tlkit.data.preprocessing import BACKGROUND, exceeds_pixel_limit, load_rgb, to_rgb  # noqa: F401 (re-exported)
from tlkit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def decode(path: str) -> np.ndarray:
    """load_rgb with a one-line DataError naming the file; never substitutes another sample (that would silently
    change the data the user thinks they trained on)."""
    try:
        return load_rgb(path)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise DataError(f"Cannot decode {path} ({type(exc).__name__}: {exc}); remove or repair the file.") from exc


@dataclass(frozen=True)
class BadSample:
    """What a dataset returns under on_bad="skip" for a file that no longer decodes (or whose cached feature row is
    missing); the collate functions drop it, never substituting another sample."""

    path: str
    reason: str
