"""Eval and train transforms: shapes, determinism, normalisation, the crop_pct resize, horizontal flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlkit.data.augment import (
    TrainAugment,
    build_eval_transform,
    build_train_transform,
    eval_resize_size,
)
from tlkit.data.preprocessing import Preprocessing

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
FULL_CROP = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))


def pre(input_size: int = 32, crop_pct: float = 0.875) -> Preprocessing:
    return Preprocessing(input_size=input_size, crop_pct=crop_pct, interpolation="bicubic", mean=MEAN, std=STD)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def normalised(image: np.ndarray) -> torch.Tensor:
    """What the transforms should output for `image` when no resize or crop happens."""
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Eval


@pytest.mark.parametrize(("height", "width"), [(40, 60), (60, 40), (20, 24), (32, 32)])
def test_eval_transform_output_is_three_by_input_size_square(height, width):
    out = build_eval_transform(pre(32))(random_image(height, width))
    assert out.shape == (3, 32, 32)
    assert out.dtype == torch.float32


def test_eval_transform_is_deterministic():
    transform = build_eval_transform(pre(32))
    image = random_image(45, 37)
    assert torch.equal(transform(image), transform(image))


@pytest.mark.parametrize("value", [0, 100, 255])
def test_eval_transform_normalises_with_mean_and_std(value):
    out = build_eval_transform(pre(32))(np.full((40, 50, 3), value, dtype=np.uint8))
    expected = torch.tensor([(value / 255 - m) / s for m, s in zip(MEAN, STD)]).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("input_size", "crop_pct", "expected"),
    [(224, 0.875, 256), (224, 0.95, 235), (32, 0.875, 36), (96, 1.0, 96), (64, 0.8, 80)],
)
def test_eval_resize_size_is_floor_of_input_size_over_crop_pct(input_size, crop_pct, expected):
    assert eval_resize_size(pre(input_size, crop_pct)) == expected


def test_eval_centre_crop_removes_the_border_that_crop_pct_excludes():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[8:-8, 8:-8] = 255  # an 8 px black frame = the 12.5% that crop_pct 0.75 cuts off each side
    white = normalised(np.full((48, 48, 3), 255, dtype=np.uint8))
    cropped = build_eval_transform(pre(48, crop_pct=0.75))(image)  # resize to 64 (no-op), crop the middle 48
    torch.testing.assert_close(cropped, white, atol=1e-5, rtol=0)


def test_eval_with_crop_pct_one_keeps_the_whole_image():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[8:-8, 8:-8] = 255
    whole = build_eval_transform(pre(64, crop_pct=1.0))(image)
    torch.testing.assert_close(whole, normalised(image), atol=1e-5, rtol=0)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_eval_transform_is_timms_eval_transform_exactly(interpolation):
    # The claim in docs/recipes.md: timm's create_transform (torchvision Resize + CenterCrop + ToTensor + Normalize on
    # a PIL image) gives bit-identical input, for odd sizes that exercise the long-side and crop rounding.
    from PIL import Image
    from timm.data import create_transform

    for size, crop_pct in [(224, 0.875), (224, 0.882), (32, 0.9)]:
        p = Preprocessing(input_size=size, crop_pct=crop_pct, interpolation=interpolation, mean=MEAN, std=STD)
        timm_eval = create_transform(input_size=(3, size, size), crop_pct=crop_pct, interpolation=interpolation,
                                     mean=MEAN, std=STD)
        for i, (h, w) in enumerate([(301, 401), (401, 300), (17, 9), (257, 1000), (size, size + 1)]):
            image = random_image(h, w, seed=i)
            assert torch.equal(build_eval_transform(p)(image), timm_eval(Image.fromarray(image)))


def test_eval_resize_truncates_the_long_side_and_centre_crop_rounds_halves_to_even():
    from tlkit.data.preprocessing import crop_origin, short_side_shape

    assert short_side_shape(300, 401, 256) == (256, 342)  # 256 * 401 / 300 = 342.19
    assert short_side_shape(299, 200, 256) == (382, 256)  # 256 * 299 / 200 = 382.72 -> 382, not 383
    assert crop_origin("center", 257, 260, 224) == (16, 18)  # 33 / 2 = 16.5 -> 16 (even); 36 / 2 = 18
    assert crop_origin("center", 259, 224, 224) == (18, 0)  # 35 / 2 = 17.5 -> 18 (even)


# ---------------------------------------------------------------------------------------------------------------------
# Train


@pytest.mark.parametrize(("height", "width"), [(40, 60), (24, 20)])
def test_train_transform_output_is_three_by_input_size_square(height, width):
    out = build_train_transform(pre(32), TrainAugment())(random_image(height, width))
    assert out.shape == (3, 32, 32)
    assert out.dtype == torch.float32


def test_train_full_crop_without_flip_is_just_normalisation():
    image = random_image(32, 32)
    out = build_train_transform(pre(32), TrainAugment(hflip=0.0, **FULL_CROP))(image)
    torch.testing.assert_close(out, normalised(image), atol=1e-5, rtol=0)


def test_hflip_one_mirrors_the_image():
    image = random_image(32, 32)  # random pixels: not mirror-symmetric
    out = build_train_transform(pre(32), TrainAugment(hflip=1.0, **FULL_CROP))(image)
    torch.testing.assert_close(out, normalised(image[:, ::-1]), atol=1e-5, rtol=0)
    assert not torch.allclose(out, normalised(image))


# ---------------------------------------------------------------------------------------------------------------------
# Presets and the seeds' augmentations

from tlkit.data.augment import PRESETS, short_side_range
from tlkit.data.augment import TrainAugment as Aug


def test_presets_expand_to_explicit_values_and_fields_override_them():
    heavy = Aug(preset="heavy", hflip=0.1, cutout={"p": 0.9})
    assert heavy.hflip == 0.1
    assert heavy.cutout.p == 0.9 and heavy.cutout.holes == (1, 2)  # the rest of the preset's cutout stays
    assert heavy.jitter.p == PRESETS["heavy"]["jitter"]["p"]
    assert Aug.model_validate("medium").jitter.p > 0


@pytest.mark.parametrize(("name", "deterministic"), [("none", True), ("light", False), ("heavy", False)])
def test_only_the_none_preset_is_deterministic(name, deterministic):
    assert Aug(preset=name).is_deterministic is deterministic


def test_none_preset_equals_the_eval_transform():
    image = random_image(50, 70)
    train = build_train_transform(pre(32), Aug(preset="none"))
    assert torch.equal(train(image), build_eval_transform(pre(32))(image))


def test_vertical_flip_mirrors_rows():
    image = random_image(32, 32)
    out = build_train_transform(pre(32), Aug(hflip=0.0, vflip=1.0, **FULL_CROP))(image)
    torch.testing.assert_close(out, normalised(image[::-1].copy()), atol=1e-5, rtol=0)


def test_random_resized_crop_output_size_for_any_input():
    transform = build_train_transform(pre(48), Aug(preset="heavy"))
    for h, w in [(30, 90), (200, 120), (48, 48)]:
        assert transform(random_image(h, w)).shape == (3, 48, 48)


def test_short_side_resize_stays_in_range_and_varies():
    p = pre(32)
    aug = Aug(crop="short_side", short_side=(40, 64))
    resize = build_train_transform(p, aug).pipeline.transforms[0]
    torch.manual_seed(0)
    sides = {min(resize(image=random_image(50, 80))["image"].shape[:2]) for _ in range(40)}
    assert min(sides) >= 40 and max(sides) <= 64 and len(sides) > 5
    assert build_train_transform(p, aug)(random_image(50, 80)).shape == (3, 32, 32)


def test_short_side_range_defaults_to_resnet_256_480_scaled_to_input():
    assert short_side_range(pre(224), Aug(crop="short_side")) == (256, 480)
    assert short_side_range(pre(112), Aug(crop="short_side")) == (128, 240)


def test_cutout_blacks_out_a_hole_of_the_asked_size():
    white = np.full((64, 64, 3), 255, dtype=np.uint8)
    aug = Aug(preset="none", cutout={"p": 1.0, "holes": (1, 1), "size": (0.25, 0.25), "fill": 0})
    out = build_train_transform(pre(64, crop_pct=1.0), aug)(white)
    black = torch.isclose(out[0], torch.tensor((0 - MEAN[0]) / STD[0]), atol=1e-4)
    assert int(black.sum()) == 16 * 16
    rows, cols = black.any(dim=1).nonzero(), black.any(dim=0).nonzero()
    assert len(rows) == 16 and len(cols) == 16  # one square hole


def test_colour_jitter_moves_colour_statistics():
    grey = np.full((32, 32, 3), 128, dtype=np.uint8)
    aug = Aug(preset="none", jitter={"p": 1.0, "brightness": 0.5, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    transform = build_train_transform(pre(32, crop_pct=1.0), aug)
    torch.manual_seed(0)
    means = torch.stack([transform(grey).mean() for _ in range(20)])
    assert means.std() > 0.05
    assert torch.equal(build_eval_transform(pre(32, crop_pct=1.0))(grey), build_eval_transform(pre(32, crop_pct=1.0))(grey))


def test_same_torch_seed_gives_the_same_augmentations_and_another_seed_differs():
    image = random_image(60, 60)

    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        transform = build_train_transform(pre(32), Aug(preset="heavy"))
        return torch.stack([transform(image) for _ in range(4)])

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_bad_ranges_and_unknown_keys_are_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="min <= max"):
        Aug(crop_scale=(0.9, 0.2))
    with pytest.raises(ValidationError, match="extra"):
        Aug(cutot={"p": 1})
