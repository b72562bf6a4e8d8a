"""One image as `tlkit data optimize` stores it: decoded as the folder path decodes it, its shorter side scaled down
to a bound, JPEG bytes. Torch-free on purpose: the encoding worker processes are started fresh (spawn), and importing
only PIL and numpy keeps their start-up well under a second."""

from __future__ import annotations

import io
import logging

from tlkit.data.images import decode
from tlkit.errors import DataError

log = logging.getLogger(__name__)


def encode(item: tuple[str, int, int], *, short_side: int, quality: int) -> dict | None:
    """(path, label, index) -> {"image": JPEG bytes, shorter side at most short_side (never enlarged), "label",
    "index"}; None (logged) for a file that does not decode. The shorter side, because the eval transform resizes
    the shorter side (to 256 px for a 224 px model): bounding the longer one would make it upscale."""
    from PIL import Image

    path, label, index = item
    try:
        pixels = decode(path)  # EXIF orientation, every mode to RGB: the folder path's decoding
    except DataError as exc:
        log.warning("skipped %s: %s", path, str(exc).splitlines()[0])
        return None
    image = Image.fromarray(pixels)
    scale = short_side / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return {"image": buffer.getvalue(), "label": int(label), "index": int(index)}
