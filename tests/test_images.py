"""Decoding: every PIL mode to RGB with alpha on white, 16-bit scaled, EXIF orientation applied."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tlkit.data.images import load_rgb, to_rgb

WHITE = [255, 255, 255]
EXIF_ORIENTATION = 0x0112


def rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB"
    return np.asarray(out)


def test_rgb_image_is_returned_unchanged():
    image = Image.new("RGB", (2, 2), (10, 20, 30))
    assert to_rgb(image) is image


def test_greyscale_becomes_three_equal_channels():
    assert rgb(Image.new("L", (2, 2), 77)).tolist() == [[[77, 77, 77]] * 2] * 2


def test_greyscale_alpha_transparent_pixel_becomes_white():
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (50, 0))
    image.putpixel((1, 0), (50, 255))
    assert rgb(image).tolist() == [[WHITE, [50, 50, 50]]]


def test_rgba_fully_transparent_pixel_becomes_white():
    assert rgb(Image.new("RGBA", (1, 1), (10, 20, 30, 0))).tolist() == [[WHITE]]


def test_rgba_opaque_pixel_keeps_its_colour():
    assert rgb(Image.new("RGBA", (1, 1), (10, 20, 30, 255))).tolist() == [[[10, 20, 30]]]


def test_rgba_half_transparent_pixel_blends_with_white():
    (value,) = set(rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 128)))[0, 0].tolist())
    assert value == pytest.approx(127, abs=1)


def test_rgba_composites_onto_a_given_background():
    out = to_rgb(Image.new("RGBA", (1, 1), (10, 20, 30, 0)), background=(0, 128, 0))
    assert np.asarray(out).tolist() == [[[0, 128, 0]]]


def test_palette_transparent_index_becomes_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as loaded:
        assert loaded.mode == "P" and loaded.info.get("transparency") == 0
        assert rgb(loaded).tolist() == [[WHITE, [40, 50, 60]]]


def test_palette_without_transparency_keeps_palette_colours():
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30] + [0] * (256 * 3 - 3))
    assert rgb(image).tolist() == [[[10, 20, 30]]]


def test_cmyk_converts_to_rgb():
    image = Image.new("CMYK", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    image.putpixel((1, 0), (0, 0, 0, 255))  # full black
    image.putpixel((2, 0), (255, 0, 0, 0))  # full cyan
    assert rgb(image).tolist() == [[WHITE, [0, 0, 0], [0, 255, 255]]]


def test_16_bit_greyscale_is_scaled_not_clipped():
    image = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    assert image.mode == "I;16"
    grey = rgb(image)[..., 0]
    assert grey[1, 1] == 255  # the brightest value
    assert grey[0, 1] == pytest.approx(255 * 1000 / 4000, abs=1)  # clipping would make this 255
    assert grey[0, 0] == 0


def test_32_bit_greyscale_with_negative_values_keeps_their_order():
    image = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))
    assert image.mode == "I"
    grey = rgb(image)[0, :, 0].astype(int)
    assert grey[0] <= grey[1] <= grey[2]


def test_load_rgb_applies_exif_orientation(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high as stored
    stored[:10] = (255, 0, 0)  # top half red
    stored[10:] = (0, 0, 255)  # bottom half blue
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)

    out = load_rgb(tmp_path / "rotated.jpg")

    assert out.shape == (40, 20, 3)
    assert out.dtype == np.uint8
    assert out[20, 17].argmax() == 0  # the stored top (red) is now on the right
    assert out[20, 2].argmax() == 2  # the stored bottom (blue) is now on the left


def test_load_rgb_converts_a_greyscale_file_to_hwc_rgb(tmp_path):
    Image.new("L", (5, 3), 200).save(tmp_path / "grey.png")
    out = load_rgb(tmp_path / "grey.png")
    assert out.shape == (3, 5, 3)
    assert (out == 200).all()
