"""Decode one image file to RGB uint8 numpy: EXIF orientation applied, every mode converted, alpha composited.

The decoding itself lives in tlkit.data.preprocessing (numpy + Pillow only), because the export bundle ships that
module and must decode exactly as training and predict do.
"""

from __future__ import annotations

from pathlib import Path

from tlkit.data.preprocessing import BACKGROUND, exceeds_pixel_limit, load_rgb, to_rgb  # noqa: F401 (re-exported)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
