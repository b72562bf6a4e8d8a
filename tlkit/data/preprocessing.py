"""The eval-time input contract of a backbone, and the one eval preprocessing.

Validation, evaluate, predict, every TTA view and export call `eval_preprocess` / `make_views` below. This module
needs only numpy and Pillow on purpose: `tlkit export` copies it verbatim into the export bundle, where predict.py
(numpy + Pillow + onnxruntime) preprocesses with this very code.

The eval preprocessing, exactly (`describe_eval_preprocessing` writes the same into the export's model.json):
1. Decode with Pillow: `ImageOps.exif_transpose`, then RGB; alpha is composited onto white, 16/32-bit greyscale is
   stretched to 8 bits (`to_rgb`).
2. Resize the short side to R = floor(input_size / crop_pct) with
   `PIL.Image.Image.resize((w, h), resample=PIL_RESAMPLE[interpolation], reducing_gap=None)` on the RGB uint8 image.
   The long side becomes int(R * long / short) (truncated, float64), and an image already that size is not
   resampled. Pillow's filters widen with the scale factor when downscaling, so the downscale is antialiased.
3. Centre-crop S x S (S = input_size) at top = round((h - S) / 2), left = round((w - S) / 2) (Python's round:
   halves to even), as torchvision's CenterCrop.
4. float32: (x / 255 - mean) / std per channel, each step in float32; layout CHW, channel order RGB.
Steps 2-4 are torchvision's Resize(R) + CenterCrop(S) + ToTensor + Normalize on a PIL image, i.e. timm's eval
transform (`timm.data.create_transform(**data_config)`); tests/test_augment.py checks the outputs are identical.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "area")
# Pillow's resampling filters; "area" is Pillow's BOX filter (each output pixel = mean of the input pixels it covers).
PIL_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
}
BACKGROUND = (255, 255, 255)  # transparent pixels become white, as most viewers show them
# Names this implementation in feature-cache keys: features computed by an earlier eval resize (albumentations' cv2
# area resize, before issue 16) or another Pillow must not be reused.
EVAL_PREPROCESSING_ID = f"pillow-short-side-v1 (Pillow {Image.__version__})"
MAX_INPUT_SIZE = 2048  # the largest model input a checkpoint or model.json may state (the largest TTA scale too)
CROPS = ("center", "top_left", "top_right", "bottom_left", "bottom_right", "full")


@dataclass(frozen=True)
class Preprocessing:
    """The eval-time input contract of a backbone; travels into checkpoints and exports."""

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """From a checkpoint's or model.json's dict, checked (the file may come from anyone): ValueError naming the
        first bad value (KeyError / TypeError for a missing or non-numeric one)."""
        pre = cls(
            input_size=int(d["input_size"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
        )
        problem = pre.problem()
        if problem:
            raise ValueError(f"preprocessing: {problem}")
        return pre

    def problem(self) -> str | None:
        """What makes this contract unusable (None when it is sound): sizes out of range, an unknown interpolation,
        mean/std that are not 3 finite numbers (std > 0). A NaN mean would make every probability NaN."""
        if not 1 <= self.input_size <= MAX_INPUT_SIZE:
            return f"input_size {self.input_size} is not in 1..{MAX_INPUT_SIZE}"
        if not 0.1 <= self.crop_pct <= 1.0:  # NaN fails too
            return f"crop_pct {self.crop_pct} is not in 0.1..1"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                return f"{name} {list(values)} is not 3 finite numbers (R, G, B)"
        if min(self.std) <= 0:
            return f"std {list(self.std)} has a value <= 0"
        return None

    def replace(self, **overrides) -> Preprocessing:
        """Copy with the non-None overrides applied (recipe values win over the model's pretrained config)."""
        d = asdict(self)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return Preprocessing.from_dict(d)


@dataclass(frozen=True)
class View:
    """One view: resize the short side to `scale` px, take `crop` at the input size, optionally mirror it.

    crop "full" squashes the whole image to input_size x input_size instead (aspect ratio not kept, `scale` unused).
    """

    scale: int
    crop: str  # center | top_left | top_right | bottom_left | bottom_right | full
    flip: bool


# ---------------------------------------------------------------------------------------------------------------------
# Decoding


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
        return Image.fromarray(scaled).convert("RGB")
    return image.convert("RGB")


# An image whose long side is more than MAX_ASPECT_RATIO times its short side is refused from its header, as a
# decompression bomb is: a tiny file (a 1 x 60000 px PNG takes a few KB) would otherwise ask the short-side resize for
# 256 x 15,360,000 px (11 GB). Real photos, panoramas included, stay far below 100:1, and a centre crop of such a
# strip would show 1% of it anyway.
MAX_ASPECT_RATIO = 100
# The backstop on any one resize's output, whatever the scale asked for (a TTA scale up to 2048 px): no resize
# produces more pixels than tlkit decodes (PIL's Image.MAX_IMAGE_PIXELS, ~89 Mpx; 268 MB as RGB uint8).
MAX_RESIZE_PIXELS = 89_478_485


class ImageGeometryError(ValueError):
    """An image whose size preprocessing refuses (empty, an extreme aspect ratio, a resize over the bound). A
    ValueError, so every caller that skips undecodable files skips it too, with this message as the reason."""


def check_geometry(width: int, height: int) -> None:
    """ImageGeometryError for a 0-pixel image or one beyond MAX_ASPECT_RATIO (checked before any pixel is read)."""
    if width < 1 or height < 1:
        raise ImageGeometryError(f"{width}x{height} pixels: an empty image")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageGeometryError(
            f"{width}x{height} pixels: aspect ratio over {MAX_ASPECT_RATIO}:1, refused (resizing its short side "
            "would need gigabytes); crop it into pieces nearer to square")


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
        check_geometry(*image.size)
        image = ImageOps.exif_transpose(image)
        return np.asarray(to_rgb(image), dtype=np.uint8)


def _uint8(image: np.ndarray) -> np.ndarray:
    """A numpy image as uint8: uint8 as is; float images in [0, 1] (matplotlib's, skimage's img_as_float) scaled by
    255 and rounded (a plain .astype(np.uint8) would turn them black). Anything else: ValueError with the fix."""
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ValueError(f"A numpy image must be HxW or HxWxC with C in 1, 3, 4 (RGB order); got shape {image.shape}.")
    if image.dtype == np.uint8 or not image.size:  # an empty one is refused by its size just after
        return image.astype(np.uint8, copy=False)
    if image.dtype.kind == "f" and np.isfinite(image).all() and 0.0 <= image.min() and image.max() <= 1.0:
        return np.rint(image * 255.0).astype(np.uint8)
    raise ValueError(f"A numpy image must be uint8 (0-255) or float in [0, 1]; got {image.dtype}"
                     f"{_value_range(image)}. Convert 0-255 values with np.clip(x, 0, 255).astype(np.uint8), "
                     "or scale floats to [0, 1] first.")


def _value_range(image: np.ndarray) -> str:
    if not image.size or image.dtype.kind not in "fiub":
        return ""
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    if not finite.size:
        return " with no finite value"
    return f" with values {finite.min():g}..{finite.max():g}" + (" and NaN/inf" if finite.size < image.size else "")


def as_rgb(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """A path, PIL image or numpy array (HxW grey, HxWx1/3/4, uint8 or float in [0, 1], RGB(A) order) -> HxWx3 uint8
    RGB, decoded as files are (a PIL image's EXIF orientation is applied too; alpha onto white)."""
    if isinstance(image, (str, Path)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        check_geometry(*image.size)
        return np.asarray(to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        image = _uint8(image)
        check_geometry(image.shape[1], image.shape[0])
        if image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        return np.asarray(to_rgb(Image.fromarray(np.ascontiguousarray(image))), dtype=np.uint8)  # L or RGBA
    raise TypeError(f"Cannot read an image from a {type(image).__name__}; pass a file path, a PIL image or a uint8 "
                    "numpy array.")


# ---------------------------------------------------------------------------------------------------------------------
# Geometry and normalisation


def eval_resize_size(pre: Preprocessing) -> int:
    """Short-side length before the centre crop: floor(input_size / crop_pct), as timm computes it."""
    return math.floor(pre.input_size / pre.crop_pct)


def short_side_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to `short_side`; the long side is truncated, as torchvision."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def resize(rgb: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    """Pillow's resize of the RGB uint8 image to height x width (no-op when already that size)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    if height * width > MAX_RESIZE_PIXELS:
        raise ImageGeometryError(
            f"{rgb.shape[1]}x{rgb.shape[0]} pixels would be resized to {width}x{height}, over the "
            f"{MAX_RESIZE_PIXELS} pixel bound of a resize; use a smaller TTA scale or crop the image")
    out = Image.fromarray(rgb).resize((width, height), resample=PIL_RESAMPLE[interpolation],
                                                  reducing_gap=None)
    return np.asarray(out, dtype=np.uint8)


def resize_short_side(rgb: np.ndarray, short_side: int, interpolation: str) -> np.ndarray:
    return resize(rgb, *short_side_shape(rgb.shape[0], rgb.shape[1], short_side), interpolation)


def crop_origin(crop: str, height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left (y, x) of a size x size crop named `crop`; the centre one rounds as torchvision's CenterCrop."""
    if crop == "center":
        return round((height - size) / 2), round((width - size) / 2)  # round(): halves to even
    y = 0 if crop.startswith("top") else height - size
    x = 0 if crop.endswith("left") else width - size
    return y, x


def normalize(patch: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 HxWx3 -> float32 3xHxW: (x / 255 - mean) / std, every step in float32 (torchvision's ToTensor +
    Normalize, bit for bit)."""
    x = patch.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def make_views(rgb: np.ndarray, views: Sequence[View], pre: Preprocessing) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 [len(views), 3, S, S], in the order given.

    Each scale is resized once and each crop normalised once; a mirrored view is its crop flipped (normalisation is
    per pixel, so flipping before or after it is the same).
    """
    size = pre.input_size
    resized: dict[int, np.ndarray] = {}
    crops: dict[tuple[int, str], np.ndarray] = {}
    out = []
    for view in views:
        key = (view.scale, view.crop)
        if key not in crops:
            if view.crop == "full":
                patch = resize(rgb, size, size, pre.interpolation)
            else:
                if view.scale not in resized:
                    resized[view.scale] = resize_short_side(rgb, view.scale, pre.interpolation)
                scaled = resized[view.scale]
                y, x = crop_origin(view.crop, scaled.shape[0], scaled.shape[1], size)
                patch = scaled[y: y + size, x: x + size]
            crops[key] = normalize(patch, pre)
        out.append(crops[key][:, :, ::-1] if view.flip else crops[key])
    return np.ascontiguousarray(np.stack(out))


def eval_crop(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Steps 2-3 of the eval preprocessing: the uint8 S x S x 3 centre patch of the short-side resize."""
    size = pre.input_size
    scaled = resize_short_side(rgb, eval_resize_size(pre), pre.interpolation)
    y, x = crop_origin("center", scaled.shape[0], scaled.shape[1], size)
    return scaled[y: y + size, x: x + size]


def eval_preprocess(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """THE eval preprocessing: RGB uint8 HxWx3 -> float32 3xSxS (short-side resize, centre crop, normalise).

    make_views' View(eval_resize_size(pre), "center", False) is the same computation (tests/test_tta.py)."""
    return normalize(eval_crop(rgb, pre), pre)


def describe_eval_preprocessing(pre: Preprocessing) -> dict:
    """The eval preprocessing stated completely enough to reimplement it without tlkit (the export's model.json)."""
    size, short = pre.input_size, eval_resize_size(pre)
    resample = PIL_RESAMPLE[pre.interpolation].name
    return {
        "decode": "PIL.Image.open; PIL.ImageOps.exif_transpose; mode RGB as is, alpha (RGBA, LA, PA, P with "
                  "transparency) composited onto white (255, 255, 255), I/I;16 greyscale stretched from "
                  "[min(0, low), high] to 0..255 (rint), every other mode .convert('RGB')",
        "resize": {
            "library": "Pillow",
            "call": f"PIL.Image.Image.resize((new_w, new_h), resample=PIL.Image.Resampling.{resample}, "
                    "reducing_gap=None) on the RGB uint8 image",
            "interpolation": pre.interpolation,
            "antialias": "yes: Pillow's filters widen their support by the scale factor when downscaling",
            "short_side": short,
            "short_side_formula": "floor(input_size / crop_pct)",
            "size_rounding": f"short side -> exactly {short}; long side -> int({short} * long / short) (float64, "
                             "truncated toward zero); an image already that size is not resampled",
        },
        "crop": {
            "size": [size, size],
            "arithmetic": f"top = round((h - {size}) / 2), left = round((w - {size}) / 2), Python's round "
                          "(halves to even); rows top..top+S, columns left..left+S",
        },
        "normalize": {"formula": "(float32(x) / 255 - mean) / std, each operation in float32",
                      "mean": list(pre.mean), "std": list(pre.std)},
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "same_as": "timm.data.create_transform(**data_config) on a PIL RGB image (torchvision Resize + CenterCrop + "
                   "ToTensor + Normalize)",
        "reference_code": "preprocessing.py in this folder (tlkit's own module, copied verbatim): eval_preprocess",
    }
