"""strategy: auto -> linear_probe below images_per_class training images per class, finetune at or above it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_recipe_dict, write_colour_classes
from tlkit.run.auto import decide_strategy


@pytest.mark.parametrize("images,classes,threshold,kind", [
    (300, 3, 500, "linear_probe"), (1499, 3, 500, "linear_probe"), (1500, 3, 500, "finetune"), (24, 3, 8, "finetune"),
])
def test_decide_strategy_threshold(images, classes, threshold, kind):
    decided, reason = decide_strategy(images, classes, threshold)
    assert decided == kind
    assert str(threshold) in reason


@pytest.mark.parametrize("threshold,kind", [(100, "linear_probe"), (8, "finetune")])
def test_fit_resolves_auto_and_stores_the_decision(tmp_path, threshold, kind):
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    root = write_colour_classes(tmp_path / "colours")  # 8 train images per class
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"},
                                              strategy={"kind": "auto", "images_per_class": threshold},
                                              trainer={"epochs": 1}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    assert metrics["strategy"] == kind
    assert metrics["strategy_auto"]["kind"] == kind
    assert metrics["strategy_auto"]["images_per_class_threshold"] == threshold
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["strategy_auto"]["kind"] == kind
    written = (tmp_path / "run" / "recipe.yaml").read_text()
    assert f"# strategy: auto -> {kind}" in written and f"kind: {kind}" in written
    if kind == "finetune":
        assert stored["strategy_auto"]["backbone_lr_mult"] == 0.1
