"""Decode one image file to RGB uint8 numpy: EXIF orientation applied, every mode converted, alpha composited;
failures are a one-line DataError or, for datasets that skip bad files, a BadSample."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlkit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
BACKGROUND = (255, 255, 255)  # transparent pixels become white, as most viewers show them


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any PIL mode -> RGB. Transparency (RGBA, LA, P with a transparent index) is composited onto `background`."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: stretch [min(0, low), high] to 8 bits instead of clipping everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        low = min(0.0, float(array.min()))
        span = (float(array.max()) - low) or 1.0
        scaled = np.rint((array - low) * (255.0 / span)).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    return image.convert("RGB")


def exceeds_pixel_limit(width: int, height: int) -> bool:
    """True for images larger than the one pixel limit tlkit applies everywhere (training scan, decode, predict,
    evaluate): PIL's Image.MAX_IMAGE_PIXELS (~89 Mpx; None disables it). PIL itself only warns up to twice that."""
    limit = Image.MAX_IMAGE_PIXELS
    return bool(limit) and width * height > limit


def load_rgb(path: str | Path) -> np.ndarray:
    """Read `path` as an HxWx3 uint8 array in display orientation (EXIF transpose applied).

    Images over the pixel limit are refused from their header (DecompressionBombError), before any pixel is decoded.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below, with the reason
        image = Image.open(path)
    with image:
        if exceeds_pixel_limit(*image.size):
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} pixels is over the {Image.MAX_IMAGE_PIXELS} pixel limit (PIL's "
                "Image.MAX_IMAGE_PIXELS); downscale the image, or raise the limit if you trust it"
            )
        image = ImageOps.exif_transpose(image)
        return np.asarray(to_rgb(image), dtype=np.uint8)


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
