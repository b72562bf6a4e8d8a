"""Multi-layer probe features (Head2Toe): pooled intermediate stages + the last features, cached, probed, exported."""

from __future__ import annotations

import pytest
import torch
from conftest import write_colour_classes
from test_cache import probe_recipe

from tlkit.errors import BackboneError, RecipeError
from tlkit.infer.checkpoint import load_checkpoint
from tlkit.model.classifier import create_classifier
from tlkit.model.module import TransferModule
from tlkit.model.strategies import strategy_from
from tlkit.run import export_checkpoint, fit


@pytest.mark.parametrize(("name", "features", "widths"), [
    ("test_efficientnet", "stages", (16, 24, 32, 48, 64, 256)),
    ("test_efficientnet", [3, 1], (24, 48, 256)),
    ("test_resnet", "stages", (32, 32, 48, 192, 96)),  # the last stage is the final map: not repeated
])
def test_the_extractor_concatenates_normalised_stage_blocks(name, features, widths):
    model = create_classifier(name, ["a", "b"], weights="none", features=features, stage_grid=1)
    assert model.stage_pooling.block_widths == widths and model.num_features == sum(widths)
    out = model.eval().embed(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, sum(widths))
    for block in torch.split(out, widths, dim=1):  # every block has unit mean square per image
        torch.testing.assert_close(block.pow(2).mean(1), torch.ones(3), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(7, 7), (4, 6), (1, 1), (5, 3)])
def test_grid_pooling_is_adaptive_average_pooling(size):
    from tlkit.model.multilayer import grid_pool

    feature_map = torch.randn(2, 3, *size)
    for grid in (1, 2, 3):
        expected = torch.nn.functional.adaptive_avg_pool2d(feature_map, grid).flatten(1)
        torch.testing.assert_close(grid_pool(feature_map, grid), expected)


def test_a_stage_grid_widens_only_the_stage_blocks():
    model = create_classifier("test_efficientnet", ["a", "b"], weights="none", features=[3, 1], stage_grid=2)
    assert model.stage_pooling.block_widths == (4 * 24, 4 * 48, 256)
    out = model.eval().embed(torch.randn(3, 3, 32, 32))
    for block in torch.split(out, model.stage_pooling.block_widths, dim=1):
        torch.testing.assert_close(block.pow(2).mean(1), torch.ones(3), atol=1e-4, rtol=1e-4)


def test_the_last_block_is_the_plain_backbones_features_up_to_scale():
    torch.manual_seed(0)
    plain = create_classifier("test_efficientnet", ["a", "b"], weights="none")
    multi = create_classifier("test_efficientnet", ["a", "b"], weights="none", features=[2])
    multi.backbone.load_state_dict(plain.backbone.state_dict())
    x = torch.randn(2, 3, 32, 32)
    last, direct = multi.eval().embed(x)[:, -plain.num_features:], plain.eval().embed(x)
    torch.testing.assert_close(last / last.norm(dim=1, keepdim=True), direct / direct.norm(dim=1, keepdim=True))


def test_a_stage_out_of_range_is_a_one_line_error():
    with pytest.raises(BackboneError, match=r"got stage 7; test_resnet has stages 0-4"):
        create_classifier("test_resnet", ["a", "b"], weights="none", features=[7])


def test_settings_refuse_bad_values_with_their_field():
    with pytest.raises(RecipeError, match="features"):
        strategy_from({"kind": "linear_probe", "features": []})
    with pytest.raises(RecipeError, match="set solver: lbfgs"):
        strategy_from({"kind": "linear_probe", "select": 0.5})


def test_the_head_input_is_the_concatenated_width():
    module = TransferModule({"name": "test_resnet", "weights": "none"}, ["a", "b"],
                            strategy={"kind": "linear_probe", "features": "stages"})
    assert module.head[-1].in_features == 4 * (32 + 32 + 48 + 192) + 96  # stages pooled 2 x 2, the last globally
    assert module.backbone_frozen and not any(p.requires_grad for p in module.backbone.parameters())


def test_each_feature_choice_gets_its_own_cache_entries(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    runs = {}
    for features in ("last", "stages", [1, 2], "stages"):
        recipe = probe_recipe(root, tmp_path / "cache", strategy={"kind": "linear_probe", "features": features},
                              trainer={"epochs": 1})
        runs[str(features)] = fit(recipe, run_dir=tmp_path / f"run{len(runs)}")["feature_cache"]
    total = runs["last"]["extracted"]
    assert runs["[1, 2]"]["extracted"] == total and runs["[1, 2]"]["from_disk"] == 0
    assert runs["stages"]["from_disk"] == total  # the second stages run read the first one's features


@pytest.mark.parametrize("strategy", [
    {"kind": "linear_probe", "features": "stages"},
    {"kind": "linear_probe", "features": "stages", "solver": "lbfgs", "select": 0.25},
])
def test_sgd_and_closed_form_probes_train_and_reload(tmp_path, strategy):
    root = write_colour_classes(tmp_path / "c", per_class=12)
    metrics = fit(probe_recipe(root, tmp_path / "cache", strategy=strategy), run_dir=tmp_path / "run")
    assert metrics["val_acc"] >= 0.9
    module = load_checkpoint(metrics["last_checkpoint"])
    assert module.classifier.num_features == 1312 and module.strategy.features == "stages"
    weight = module.head[-1].weight
    if strategy.get("select"):
        assert metrics["feature_cache"]["solver"]["kept_features"] == 328
        assert int((weight.abs().sum(0) > 0).sum()) == 328  # unselected inputs carry weight 0


@pytest.mark.slow
def test_the_export_is_extractor_plus_head(tmp_path):
    from tlkit.infer.export import load_exported

    root = write_colour_classes(tmp_path / "c", per_class=6)
    recipe = probe_recipe(root, tmp_path / "cache", strategy={"kind": "linear_probe", "features": [1, 3]},
                          trainer={"epochs": 1})
    metrics = fit(recipe, run_dir=tmp_path / "run")
    summary = export_checkpoint(metrics["last_checkpoint"], tmp_path / "export", images=[root / "val"])
    assert summary["onnx_parity"]["max_abs_diff_logits"] < 1e-4
    reloaded, original = load_exported(tmp_path / "export" / "model.safetensors"), load_checkpoint(metrics["last_checkpoint"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), original(x))
