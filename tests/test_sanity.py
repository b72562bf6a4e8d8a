"""tlkit check: initial loss ~ ln(C) and overfitting a tiny subset; verdict functions and the CLI on tiny models."""

from __future__ import annotations

import math

import yaml

from tests.conftest import tiny_recipe_dict, write_colour_classes
from tlkit.tune import sanity


def test_initial_loss_check_passes_near_ln_c_and_fails_far_from_it():
    assert sanity.initial_loss_check(math.log(3) * 1.01, 3).passed
    high = sanity.initial_loss_check(3.0, 3)
    assert not high.passed and any("final layer" in c for c in high.causes)
    low = sanity.initial_loss_check(0.1, 3)
    assert not low.passed and any("leak" in c for c in low.causes)
    assert not sanity.initial_loss_check(math.nan, 3).passed


def test_overfit_check_needs_full_accuracy_and_low_loss():
    assert sanity.overfit_check([(1.1, 0.3), (0.01, 1.0)], 3).passed
    assert not sanity.overfit_check([(1.1, 0.3), (0.9, 0.6)], 3).passed
    blown = sanity.overfit_check([(1.1, 0.3), (math.nan, 0.3)], 3)
    assert not blown.passed and "too high" in blown.causes[0]


def test_pick_per_class_takes_n_of_each():
    chosen = sanity.pick_per_class([0, 0, 0, 1, 1, 2, 2, 2, 2], 2)
    assert sorted([0, 0, 0, 1, 1, 2, 2, 2, 2][i] for i in chosen) == [0, 0, 1, 1, 2, 2]


def _write(tmp_path, backbone=None, **sections):
    root = write_colour_classes(tmp_path / "colours")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(root, backbone={"name": "test_resnet", **(backbone or {})},
                                                    **sections)))
    return path


def test_cli_check_passes_on_a_healthy_recipe(tmp_path, capsys):
    from tlkit.cli.main import main

    recipe = _write(tmp_path, optim={"name": "adamw", "lr": 0.3})
    assert main(["check", str(recipe), "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "[PASS] initial loss" in out and f"ln(3) = {math.log(3):.6f}" in out
    assert "[PASS] overfit tiny subset" in out


def test_cli_check_fails_with_exit_1_and_a_cause(tmp_path, capsys):
    """Badly scaled inputs (std 0.001) and a random final layer: the untrained model is confidently wrong; a tiny
    LR cannot overfit."""
    from tlkit.cli.main import main

    recipe = _write(tmp_path, backbone={"std": [0.001, 0.001, 0.001]}, head={"final_init": "he_normal"},
                    optim={"lr": 1e-7})
    assert main(["check", str(recipe), "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] initial loss" in out
    assert "likely cause: inputs are not normalised" in out
    assert "[FAIL] overfit tiny subset" in out
    assert "likely cause: the learning rate is too low" in out
