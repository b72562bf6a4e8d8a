"""strategy: auto -> linear_probe or lp_ft, from the data's size and a held-out measurement of the closed-form probe."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.conftest import tiny_recipe_dict, write_colour_classes
from tlkit.model.strategies import Auto
from tlkit.run.auto import decide_strategy


def decide(train_images=3000, num_classes=10, last=0.73, stages=0.75, **settings):
    return decide_strategy(train_images=train_images, num_classes=num_classes, scores={"last": last, "stages": stages},
                           settings=Auto(**settings))


def test_few_images_per_class_is_small_data_and_probes_on_the_better_features():
    decision = decide(train_images=245, num_classes=2, last=0.90, stages=0.95, min_images=10)
    assert (decision.kind, decision.features, decision.rule) == ("linear_probe", "stages", "small_data")
    assert "122 per class" in decision.reason and "95.0%" in decision.reason


def test_few_images_in_all_is_small_data_even_with_many_per_class():
    decision = decide(train_images=900, num_classes=2, min_images=1000)  # 450 per class, but 900 in all
    assert (decision.kind, decision.rule) == ("linear_probe", "small_data")
    assert "1000 in all" in decision.reason


def test_enough_data_and_a_probe_short_of_saturation_gives_lp_ft():
    decision = decide()  # cifar10_small's numbers: 300 per class, probe 73-75%
    assert (decision.kind, decision.rule) == ("lp_ft", "probe_short_of_saturation")
    assert "75.0%" in decision.reason and "90%" in decision.reason


def test_enough_data_and_a_saturated_probe_stays_a_linear_probe():
    decision = decide(last=0.93, stages=0.91)
    assert (decision.kind, decision.features, decision.rule) == ("linear_probe", "last", "probe_saturated")


def test_the_saturation_threshold_is_the_boundary():
    assert decide(last=0.899, stages=None, saturation=0.9).kind == "lp_ft"
    assert decide(last=0.9, stages=None, saturation=0.9).kind == "linear_probe"


def test_equal_scores_choose_the_last_features():
    assert decide(last=0.8, stages=0.8).features == "last"


def test_no_held_out_score_never_fine_tunes():
    decision = decide(last=None, stages=None)
    assert (decision.kind, decision.features, decision.rule) == ("linear_probe", "last", "no_measurement")


def write_indistinguishable_classes(root, per_class=10, size=32):
    """Three classes of the same uniform noise: no probe can separate them, so it never saturates."""
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        for i in range(per_class):
            side = "train" if i < per_class * 2 // 3 else "val"
            (root / side / name).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(root / side / name / f"{i:02d}.png")
    return root


def test_measurement_scores_both_feature_choices_on_held_out_images(tmp_path):
    from tlkit.recipe import validate_recipe
    from tlkit.run.auto import measure_probes
    from tlkit.run.build import build_datamodule

    root = write_colour_classes(tmp_path / "colours", per_class=15)  # 10 train images per class
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"}, strategy={"kind": "auto"}))
    measured = measure_probes(recipe, build_datamodule(recipe))
    assert set(measured) == {"last", "stages"}
    for m in measured.values():
        assert m["metric"] == "accuracy" and m["held_out_images"] == 6 and m["fit_images"] == 24
        # Colour classes are separable by these features: held-out images scored against their own labels are all
        # right (scored against misaligned or shuffled labels they would not be; scoring the training rows instead is
        # caught on indistinguishable classes below, whose held-out score stays under the saturation bar).
        assert m["score"] == 1.0 and m["C"] > 0
        assert m["extracted"] == 30 and m["from_disk"] == 0
    assert measured["stages"]["width"] > measured["last"]["width"] == 96
    again = measure_probes(recipe, build_datamodule(recipe))  # the second time the cache serves every row
    assert again["last"]["from_disk"] == 30 and again["last"]["score"] == measured["last"]["score"]


def test_small_data_fit_probes_in_closed_form_and_records_every_step(tmp_path):
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    root = write_colour_classes(tmp_path / "colours")  # 8 train images per class: small data
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"}, strategy={"kind": "auto"},
                                              augment="none"))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["strategy_auto"]
    assert metrics["strategy"] == stored["kind"] == "linear_probe" and stored["rule"] == "small_data"
    assert stored["train_images"] == 24 and stored["thresholds"] == {"images_per_class": 200, "min_images": 1000,
                                                                     "saturation": 0.9}
    assert {"last", "stages"} <= set(stored["holdout"]) and stored["holdout"]["fraction"] == 0.2
    assert stored["strategy"] == {"kind": "linear_probe", "solver": "lbfgs", "features": stored["features"],
                                  "stage_grid": 2, "select": None}
    assert stored["seconds"] > 0
    assert metrics["feature_cache"]["from_disk"] == 24  # the measurement's rows of the chosen features, reused
    written = (tmp_path / "run" / "recipe.yaml").read_text()
    assert written.startswith("# strategy: auto -> linear_probe") and "rule small_data" in written
    assert "kind: linear_probe" in written and "solver: lbfgs" in written


def test_enough_data_and_an_unsaturated_probe_fit_lp_ft(tmp_path):
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    root = write_indistinguishable_classes(tmp_path / "noise")
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"}, trainer={"epochs": 1},
                                              strategy={"kind": "auto", "images_per_class": 2, "min_images": 10}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    stored = metrics["strategy_auto"]
    assert metrics["strategy"] == stored["kind"] == "lp_ft" and stored["rule"] == "probe_short_of_saturation"
    assert max(stored["holdout"][f]["score"] for f in ("last", "stages")) < 0.9
    assert stored["strategy"]["batchnorm"] == "frozen" and stored["strategy"]["probe"] == "closed_form"
    assert "probe" in metrics  # lp_ft's closed-form probe ran before its fine-tune epoch


def test_recipe_blocking_the_closed_form_fit_gets_an_sgd_probe_and_a_note(tmp_path):
    from tlkit.recipe import validate_recipe
    from tlkit.run.auto import resolve_auto_strategy
    from tlkit.run.build import build_datamodule

    root = write_colour_classes(tmp_path / "colours")
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"}, strategy={"kind": "auto"},
                                              data={"balance": "sampler"}))
    resolved, decision = resolve_auto_strategy(recipe, build_datamodule(recipe))
    assert resolved.strategy.kind == "linear_probe" and resolved.strategy.solver == "sgd"
    assert "data.balance must be none" in decision["notes"][0]
