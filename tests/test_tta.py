"""Test-time augmentation: views and their geometry, agreement with the eval transform, batched aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

from tlkit.data.augment import build_eval_transform
from tlkit.data.preprocessing import Preprocessing
from tlkit.errors import TTAError
from tlkit.infer.tta import (
    AGGREGATES,
    ViewMaker,
    aggregate,
    forward_views,
    images_per_batch,
    normalize_spec,
    resolve_policy,
)

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # normalised value = pixel / 255


def coordinate_image(height: int = 64, width: int = 96) -> np.ndarray:
    """Red channel = row, green = column: a view's pixel tells where in the image it came from."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def origin(view: torch.Tensor) -> tuple[int, int]:
    """(row, column) of a view's top-left pixel in the coordinate image."""
    return round(float(view[0, 0, 0]) * 255), round(float(view[1, 0, 0]) * 255)


def nearest_pre(input_size: int = 32, crop_pct: float = 0.5) -> Preprocessing:
    # crop_pct 0.5 -> eval resize 64 = the coordinate image's short side, so the eval view is not resampled.
    return Preprocessing(input_size=input_size, crop_pct=crop_pct, interpolation="nearest", **IDENTITY)


def bicubic_pre(input_size: int = 32, crop_pct: float = 0.875) -> Preprocessing:
    return Preprocessing(
        input_size=input_size, crop_pct=crop_pct, interpolation="bicubic", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Views


@pytest.mark.parametrize(
    ("spec", "count"),
    [
        ("none", 1),
        ("hflip", 2),
        ("ten_crop", 10),
        ("multi_scale", 6),
        ({"policy": "custom", "crops": "five", "scales": [64, 80]}, 10),
        ({"policy": "custom", "crops": "five", "flip": True, "scales": [64, 80, 96]}, 30),
        ({"policy": "custom", "crops": "full", "flip": True}, 2),
    ],
)
def test_view_count_per_policy(spec, count):
    pre = nearest_pre()
    policy = resolve_policy(spec, pre)
    assert policy.num_views == count
    views = ViewMaker(policy, pre)(coordinate_image())
    assert views.shape == (count, 3, 32, 32)


def test_five_crops_are_the_four_corners_and_the_centre_each_mirrored():
    pre = nearest_pre()  # 64 x 96 image, 32 px crops, no resize
    image = coordinate_image()
    policy = resolve_policy("ten_crop", pre)
    views = ViewMaker(policy, pre)(image)
    expected = {"center": (16, 32), "top_left": (0, 0), "top_right": (0, 64), "bottom_left": (32, 0),
                "bottom_right": (32, 64)}
    seen = {}
    for view, tensor in zip(policy.views, views):
        y, x = expected[view.crop]
        region = torch.from_numpy(image[y : y + 32, x : x + 32].astype(np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(tensor, region.flip(-1) if view.flip else region, atol=1e-6, rtol=0)
        seen[(view.crop, view.flip)] = origin(tensor)
    assert seen[("top_right", False)] == (0, 64)
    assert seen[("top_right", True)] == (0, 95)  # the mirror starts at the crop's right edge
    assert len(seen) == 10


def test_single_view_is_exactly_the_eval_transform():
    # DESIGN.md contract 6: TTA builds on the one eval preprocessing; a resampling, non-square case.
    pre = bicubic_pre()
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    eval_view = build_eval_transform(pre)(image)
    assert torch.equal(ViewMaker(resolve_policy("none", pre), pre)(image)[0], eval_view)
    hflip = ViewMaker(resolve_policy("hflip", pre), pre)(image)
    assert torch.equal(hflip[0], eval_view) and torch.equal(hflip[1], eval_view.flip(-1))
    ten = resolve_policy("ten_crop", pre)
    centre = [i for i, v in enumerate(ten.views) if v.crop == "center" and not v.flip][0]
    assert torch.equal(ViewMaker(ten, pre)(image)[centre], eval_view)


def test_scales_resize_the_short_side_before_cropping():
    pre = nearest_pre()
    policy = resolve_policy({"policy": "custom", "scales": [64, 128]}, pre)
    at_64, at_128 = ViewMaker(policy, pre)(coordinate_image())
    assert origin(at_64) == (16, 32)
    # 128 px short side = 2x: the centre crop starts at (48, 80) of the resized image = (24, 40) of the original,
    # and neighbouring pixels repeat (nearest upsampling).
    assert origin(at_128) == (24, 40)
    assert float(at_128[1, 0, 1]) == float(at_128[1, 0, 0])


def test_multi_scale_uses_three_short_sides_around_the_eval_resize():
    pre = Preprocessing(input_size=224, crop_pct=0.875, interpolation="bicubic", **IDENTITY)
    scales = sorted({v.scale for v in resolve_policy("multi_scale", pre).views})
    assert scales == [224, 256, 320]


def test_full_crop_squashes_the_whole_image_to_the_input_size():
    pre = nearest_pre()
    view = ViewMaker(resolve_policy({"policy": "custom", "crops": "full"}, pre), pre)(coordinate_image())[0]
    rows, cols = view[0] * 255, view[1] * 255
    assert float(rows.min()) < 2 and float(rows.max()) > 61  # every row of the image is represented...
    assert float(cols.min()) < 3 and float(cols.max()) > 92  # ...and every column: nothing was cropped away


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation and batching


class ConstantModel(torch.nn.Module):
    """Same logits whatever the input."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class CountingModel(torch.nn.Module):
    """Wraps a model and records the batch size of every forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("policy_name", ["hflip", "ten_crop", "multi_scale"])
@pytest.mark.parametrize("how", AGGREGATES)
def test_tta_with_a_constant_model_equals_one_view(policy_name, how):
    pre = bicubic_pre()
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    model = ConstantModel([2.0, -1.0, 0.5])
    single = forward_views(model, ViewMaker(resolve_policy("none", pre), pre)(image)[None], how)
    many = forward_views(model, ViewMaker(resolve_policy(policy_name, pre), pre)(image)[None], how)
    torch.testing.assert_close(many, single, atol=1e-6, rtol=0)
    torch.testing.assert_close(single, torch.tensor([[2.0, -1.0, 0.5]]).softmax(-1), atol=1e-6, rtol=0)


def test_tta_of_a_uniform_image_equals_one_view_with_a_real_network():
    # Every view of a flat colour is the same picture, so any policy must give the single view's prediction.
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    pre = bicubic_pre()
    image = np.full((40, 60, 3), (30, 140, 200), dtype=np.uint8)
    with torch.no_grad():
        single = forward_views(model, ViewMaker(resolve_policy("none", pre), pre)(image)[None])
        for name in ("ten_crop", "multi_scale"):
            torch.testing.assert_close(
                forward_views(model, ViewMaker(resolve_policy(name, pre), pre)(image)[None]), single, atol=1e-5, rtol=0
            )


def test_views_go_through_the_model_in_chunks_not_one_forward_per_view():
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    model = CountingModel(net)
    views = torch.randn(3, 10, 3, 32, 32)  # 3 images x 10 views
    with torch.no_grad():
        batched = forward_views(model, views, "mean_prob", max_views_per_forward=4)
        per_image = torch.stack([net(image).softmax(-1).mean(0) for image in views])  # one image's views at a time
    assert model.batches == [4] * 7 + [2]  # ceil(30 / 4) forwards, none larger than the cap
    torch.testing.assert_close(batched, per_image, atol=1e-5, rtol=0)


def test_aggregations_on_known_logits():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]])  # view 1: p = (.25, .75); view 2: (.75, .25)
    torch.testing.assert_close(aggregate(logits, "mean_prob"), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(aggregate(logits, "mean_logit"), torch.tensor([[0.5, 0.5]]))
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # (.25, .75) and (.5, .5)
    torch.testing.assert_close(aggregate(logits, "mean_prob"), torch.tensor([[0.375, 0.625]]))
    mean_logit = torch.tensor([0.0, math.log(3.0) / 2]).softmax(-1)[None]
    torch.testing.assert_close(aggregate(logits, "mean_logit"), mean_logit)
    torch.testing.assert_close(aggregate(logits, "max"), torch.tensor([[0.5 / 1.25, 0.75 / 1.25]]))


def test_loader_batches_hold_about_one_forward_of_views():
    pre = bicubic_pre()
    assert images_per_batch(resolve_policy("none", pre), 64) == 64
    assert images_per_batch(resolve_policy("ten_crop", pre), 64) == 6
    assert images_per_batch(resolve_policy({"policy": "custom", "crops": "five", "flip": True,
                                            "scales": [40, 48, 56, 64, 72, 80, 88]}, pre), 64) == 1  # 70 views


# ---------------------------------------------------------------------------------------------------------------------
# Specs


def test_unknown_policy_is_an_error_with_a_suggestion():
    with pytest.raises(TTAError, match="Did you mean 'ten_crop'"):
        normalize_spec("ten-crop")
    with pytest.raises(TTAError, match="Did you mean 'mean_prob'"):
        normalize_spec({"policy": "hflip", "aggregate": "mean_probs"})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"policy": "ten_crop", "crops": "center"}, "only applies to policy: custom"),
        ({"policy": "custom", "crops": "full", "scales": [64]}, "scales do not apply"),
        ({"policy": "custom", "scales": [0]}, "TTA scales.0: Input should be greater than 0"),
        ({"policy": "custom", "flip": "yes"}, "TTA flip: Input should be a valid boolean"),
        ({"policy": "custom", "corps": "five"}, "Did you mean 'crops'"),
    ],
)
def test_contradictory_or_malformed_specs_are_refused(spec, message):
    with pytest.raises(TTAError, match=message):
        normalize_spec(spec)


def test_scale_smaller_than_the_input_is_refused_with_the_fix():
    with pytest.raises(TTAError, match="use scales >= 32"):
        resolve_policy({"policy": "custom", "scales": [24]}, nearest_pre())


def test_named_policy_may_restate_its_own_fields():
    assert normalize_spec({"policy": "ten_crop", "crops": "five", "flip": True}) == {
        "policy": "ten_crop", "aggregate": "mean_prob"
    }


def test_command_line_takes_a_custom_policy_as_inline_yaml():
    from tlkit.cli.main import build_parser

    args = build_parser().parse_args(
        ["evaluate", "--checkpoint", "c", "--data", "d", "--tta", "ten_crop", "{policy: custom, crops: five, scales: [40]}"]
    )
    assert args.tta == ["ten_crop", {"policy": "custom", "crops": "five", "scales": [40]}]
    assert resolve_policy(args.tta[1], bicubic_pre()).num_views == 5
